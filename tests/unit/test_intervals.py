"""Prediction intervals: conformal calibration, the baselines' volatility, and the scores."""

import numpy as np
import pandas as pd
import pytest

from neuropredict import intervals, volatility
from neuropredict.errors import ConfigError
from neuropredict.intervals import Calibration, Spread


def test_the_conformal_quantile_is_the_ceil_n_plus_1_p_th_smallest_score():
    scores = np.arange(1, 20)[::-1].astype(float)  # 19 scores, 1..19
    assert intervals.conformal_quantile(scores, 0.8) == 16.0  # ceil(20 * 0.8) = 16
    assert intervals.conformal_quantile(scores, 0.95) == 19.0
    with pytest.raises(ConfigError, match="cannot calibrate a 99 % interval"):
        intervals.conformal_quantile(scores, 0.99)  # rank 20 of 19


def test_calibrated_intervals_cover_as_claimed_on_new_rows_of_the_same_kind():
    """Fat tails and a wrong scale: calibration fixes both, which a Gaussian z would not."""
    rng = np.random.default_rng(1)
    scale = rng.uniform(0.5, 2.0, 40_000)
    returns = 0.01 * scale * rng.standard_t(3, 40_000)
    spread = Spread(np.zeros(40_000), 0.004 * scale)  # right shape, scale 2.5x too small
    fit, new = slice(0, 20_000), slice(20_000, None)
    calibration = Calibration.fit({"model": Spread(spread.centre[fit], spread.scale[fit])}, returns[fit],
                                  (0.8, 0.95), 0.94, "fit")
    last = np.full(20_000, 100.0)
    bounds = calibration.bounds({"model": Spread(spread.centre[new], spread.scale[new])}, last)
    actual = last * np.exp(returns[new])
    for level in (0.8, 0.95):
        label = intervals.label(level)
        covered = np.mean((actual >= bounds[f"lower_{label}"]) & (actual <= bounds[f"upper_{label}"]))
        assert covered == pytest.approx(level, abs=0.01)


def test_ewma_scale_follows_the_riskmetrics_recursion_over_the_window():
    windows = np.array([[100.0, 101.0, 99.0, 99.0]])
    r = np.diff(np.log(windows[0]))
    lam, sd = 0.9, np.array([0.02])
    expected = sd[0] ** 2
    for x in r:
        expected = lam * expected + (1 - lam) * x**2
    np.testing.assert_allclose(volatility.ewma_scale(windows, sd, lam), np.sqrt(expected))
    np.testing.assert_allclose(volatility.ewma_scale(windows, sd, 0.0), 0.0)  # the last return was 0


def test_the_interval_score_charges_width_plus_two_over_alpha_per_unit_outside():
    lower, upper = np.array([90.0, 90.0, 90.0]), np.array([110.0, 110.0, 110.0])
    actual = np.array([100.0, 85.0, 112.0])
    np.testing.assert_allclose(intervals.interval_score(actual, lower, upper, 0.8), [20.0, 70.0, 40.0])


def _rows(hits_per_symbol: dict[str, int], n: int = 200) -> pd.DataFrame:
    """Rows whose actual lies inside every 80 % interval `hits` times out of n."""
    frames = []
    for symbol, hits in hits_per_symbol.items():
        actual = np.where(np.arange(n) < hits, 100.0, 120.0)
        frame = {"symbol": symbol, "actual": actual, "persistence": 100.0}
        for method in intervals.METHODS:
            frame[intervals.column(method, "lower", 0.8)] = 95.0
            frame[intervals.column(method, "upper", 0.8)] = 105.0 if method == "model" else 106.0
        frames.append(pd.DataFrame(frame))
    return pd.concat(frames, ignore_index=True)


def test_scores_give_coverage_width_and_a_binomial_test_per_symbol():
    scores = intervals.score(_rows({"AAA": 160, "BBB": 120}), (0.8,))
    assert scores["AAA"]["coverage_80"] == 80.0 and scores["BBB"]["coverage_80"] == 60.0
    assert scores["_pooled"]["coverage_80"] == 70.0 and scores["_pooled"]["n"] == 400
    assert scores["AAA"]["width_80"] == pytest.approx(10.0) and scores["AAA"]["ewma_width_80"] == pytest.approx(11.0)
    assert scores["AAA"]["coverage_p_80"] == pytest.approx(1.0)
    assert scores["BBB"]["coverage_p_80"] < 1e-9
    # width + 2/alpha * distance outside, in % of the last price: narrower, but each miss is 1 further
    assert scores["AAA"]["interval_score_80"] == pytest.approx(10 + 10 * 15 * 0.2)
    assert scores["AAA"]["constant_interval_score_80"] == pytest.approx(11 + 10 * 14 * 0.2)
    assert scores["AAA"]["interval_dm_t_constant_80"] > 0  # positive: the model is worse
    off = intervals.miscalibrated(scores, (0.8,), 0.01)
    assert len(off) == 1 and off[0].startswith("BBB 80 %: 60.0 %")


def test_a_calibration_travels_with_the_model(tmp_path):
    calibration = Calibration((0.8, 0.95), {"model": {"80": 1.2, "95": 2.0}}, 0.94, "2023-01-01..2023-12-31", 1750)
    calibration.save(tmp_path)
    assert Calibration.load(tmp_path) == calibration
    assert Calibration.load(tmp_path / "elsewhere") is None  # a model from before intervals


def test_a_blend_is_judged_by_its_worst_symbol_and_its_interval_score():
    """One symbol's scale is right, the other's twice too large: pooled calibration covers 80 % on
    average, but neither symbol does, which the binomial test sees."""
    rng = np.random.default_rng(2)
    symbols = np.repeat(["RIGHT", "WIDE"], 2000)
    returns = 0.01 * rng.standard_normal(4000)
    spread = Spread(np.zeros(4000), np.where(symbols == "RIGHT", 0.01, 0.02))
    calibration = Calibration.fit({"model": spread}, returns, (0.8,), 0.94, "fit")
    least_p, score = intervals.blend_fit(spread, returns, symbols, calibration)
    assert least_p < 1e-6 and score > 0
    honest = Spread(np.zeros(4000), np.full(4000, 0.01))
    fair = Calibration.fit({"model": honest}, returns, (0.8,), 0.94, "fit")
    fair_p, fair_score = intervals.blend_fit(honest, returns, symbols, fair)
    assert fair_p > 0.01 and fair_score < score
