"""The rules of promotion on live evidence, on synthetic rows: the guard's verdict, the live DM t
a worker keeps in running sums, and the comparison of two versions on the same ticks."""

import time

import numpy as np
import pandas as pd
import pytest

from neuropredict import compare, guard, promotions
from neuropredict.evaluation import dm_test
from neuropredict.settings.schema import params_from_dict
from neuropredict.stream.stats import ErrorSums
from tests.conftest import TINY_PARAMS


def _rows(n: int, model_sd: float, bias: float = 0.0, coverage_scale: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """Forecasts of a random walk: persistence's error sd 1; the model's sd model_sd around a bias;
    80 % intervals of half-width 1.2816 * model_sd * coverage_scale (calibrated at 1)."""
    rng = np.random.default_rng(seed)
    last = 100 + np.cumsum(rng.normal(0, 1, n))
    actual = last + rng.normal(0, 1, n)
    predicted = actual - rng.normal(bias, model_sd, n)
    half = 1.2816 * model_sd * coverage_scale
    return pd.DataFrame({"symbol": "AAPL", "time": pd.date_range("2024-01-01", periods=n), "actual": actual,
                         "predicted": predicted, "persistence": last, "lower_80": predicted - half,
                         "upper_80": predicted + half, "model_version": "1", "alias": "production",
                         "input_partition": 0, "input_offset": np.arange(n)})


PARAMS = params_from_dict({**TINY_PARAMS, "guard": {"window_ticks": 300, "max_dm_t": 3.0, "min_coverage_p": 1e-4}})


def test_the_guard_lets_a_calibrated_model_as_good_as_persistence_stay():
    assert guard.verdict("1", _rows(300, model_sd=1.0), PARAMS).breaches == []


def test_the_guard_names_a_model_worse_than_persistence_and_intervals_that_lost_calibration():
    worse = guard.verdict("1", _rows(300, model_sd=1.0, bias=1.0), PARAMS)
    assert worse.breaches[0].startswith("worse than persistence (DM t +")  # its intervals are off centre too
    assert worse.evidence["live_dm_t"] > 3 and worse.evidence["window_ticks"] == 300
    narrow = guard.verdict("1", _rows(300, model_sd=1.0, coverage_scale=0.5), PARAMS)
    assert len(narrow.breaches) == 1 and narrow.breaches[0].startswith("80 % intervals cover ")
    assert narrow.evidence["live_coverage_p_80"] < 1e-4


def test_a_workers_running_dm_t_equals_the_offline_test_on_the_same_errors():
    rows = _rows(500, model_sd=0.9, bias=0.05)
    model_err = (rows["actual"] - rows["predicted"]).to_numpy()
    naive_err = (rows["actual"] - rows["persistence"]).to_numpy()
    sums = ErrorSums()
    for part in np.array_split(np.arange(500), 7):  # batch by batch
        sums.add(model_err[part], naive_err[part])
    assert sums.figures()["dm_t"] == pytest.approx(dm_test(model_err**2 - naive_err**2)["dm_t"], rel=1e-9)


def test_compare_pairs_the_same_ticks_and_signs_dm_t_against_the_second_version():
    a = _rows(400, model_sd=0.8)
    b = a.assign(predicted=a["predicted"] + 0.5, lower_80=a["lower_80"] + 0.5, upper_80=a["upper_80"] + 0.5,
                 model_version="2", alias="challenger")
    result, paired = compare.compare(pd.concat([a, b.iloc[50:]]), "1", "2")  # B scored 350 of the ticks
    pooled = result["paired"]["_pooled"]
    assert pooled["n"] == 350 and len(paired) == 350
    assert pooled["dm_t"] > 2 and pooled["mse_b"] > pooled["mse_a"]
    assert result["versions"]["1"]["n"] == 400 and result["versions"]["2"]["n"] == 350
    assert pooled["coverage_a_80"] > pooled["coverage_b_80"]
    assert "DM t B-A" in compare.format_comparison(result)


def test_since_takes_a_duration_or_a_time():
    now_ms = time.time() * 1000
    assert compare.since_ms("2h") == pytest.approx(now_ms - 7_200_000, abs=5_000)
    assert compare.since_ms("2026-12-07T09:30") == int(pd.Timestamp("2026-12-07T09:30Z").timestamp() * 1000)
    assert compare.since_ms(None) is None


def test_the_history_reads_as_a_table():
    moves = [promotions.Move(0, "production", None, "1", "ana@host", "gate", "first registered model"),
             promotions.Move(60_000, "production", "1", "2", "guard", "guard", "worse than persistence")]
    text = promotions.format_history(moves)
    assert "1970-01-01 00:01:00 UTC" in text and "v1    v2  guard" in text.replace("  ", "  ")
    assert promotions.format_history([]) == "no alias moves recorded yet"
