"""The worker's counts that its Prometheus endpoint reads: the rolling window of scored ticks and
the latency histograms."""

import numpy as np
import pytest

from neuropredict.stream.stats import ErrorSums, Histogram, RollingErrors


def _sums(model_err, naive_err, inside=None) -> ErrorSums:
    sums = ErrorSums()
    m, n = np.asarray(model_err, float), np.asarray(naive_err, float)
    spread = {("model", 0.8): (float(len(m)), float(inside if inside is not None else len(m)), 1.0)}
    sums.add(m, n, spread)
    return sums


def test_the_rolling_window_keeps_the_newest_whole_batches_covering_its_ticks():
    rolling = RollingErrors(ticks=10)
    key = ("production", "1")
    for i in range(6):  # six batches of 4 ticks: errors i in batch i
        rolling.add(key, _sums([i] * 4, [1] * 4, inside=i % 2 * 4))
    total = rolling.totals()[key]
    # the newest batches covering 10 ticks: 3 batches (12 ticks; 2 would be 8, too few)
    assert total.n == 12
    assert total.model_sq == pytest.approx(4 * (3**2 + 4**2 + 5**2))
    assert total.intervals[("model", 0.8)][:2] == [12.0, 8.0]
    figures = total.figures()
    assert figures["mse"] == pytest.approx((9 + 16 + 25) / 3) and figures["naive_mse"] == 1.0


def test_merged_sums_equal_sums_added_in_one_go():
    a, b = _sums([1, 2], [1, 1]), _sums([3, -1, 0.5], [2, 0, 1])
    merged = ErrorSums()
    merged.merge(a)
    merged.merge(b)
    together = _sums([1, 2, 3, -1, 0.5], [1, 1, 2, 0, 1])
    for key in ("mse", "naive_mse", "skill", "dm_t", "scored"):
        assert merged.figures()[key] == pytest.approx(together.figures()[key]), key


def test_a_histogram_counts_each_value_in_the_first_bucket_at_or_above_it():
    h = Histogram((0.01, 0.1, 1.0))
    h.observe(np.array([0.005, 0.01, 0.05, 0.1, 0.5, 2.0, 3.0]))
    buckets, total = h.cumulative()
    assert buckets == [("0.01", 2), ("0.1", 4), ("1", 5), ("+Inf", 7)]  # le: inclusive, as Prometheus' buckets
    assert total == pytest.approx(5.665)
