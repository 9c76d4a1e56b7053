import math

import numpy as np
import pandas as pd
import pytest

from neuropredict.evaluation import diebold_mariano, error_metrics, score_rows, skill


def test_error_metrics_by_hand():
    m = error_metrics(np.array([100.0, 200.0]), np.array([101.0, 196.0]))
    assert m["mse"] == pytest.approx((1 + 16) / 2)
    assert m["rmse"] == pytest.approx(math.sqrt(8.5))
    assert m["mae"] == pytest.approx(2.5)
    assert m["mape"] == pytest.approx((1 / 100 + 4 / 200) / 2 * 100)


def test_skill_sign():
    assert skill(0.9, 1.0) == pytest.approx(0.1)
    assert skill(1.1, 1.0) == pytest.approx(-0.1)


def test_dm_t_is_large_and_positive_when_model_is_clearly_worse():
    rng = np.random.default_rng(0)
    actual = 100 + rng.normal(0, 1, 500)
    persistence = actual + rng.normal(0, 1, 500)
    worse = actual + rng.normal(0, 3, 500)
    assert diebold_mariano(actual, worse, persistence)["dm_t"] > 5
    assert diebold_mariano(actual, persistence, persistence)["dm_t"] == 0.0


def test_score_rows_scores_model_and_baselines_on_the_same_rows():
    rows = pd.DataFrame({"symbol": ["A", "A", "B", "B"], "actual": [10.0, 11.0, 20.0, 19.0],
                         "predicted": [10.5, 10.5, 19.5, 19.5], "persistence": [9.0, 10.0, 21.0, 20.0],
                         "drift": [9.1, 10.1, 21.1, 20.1]})
    s = score_rows(rows)
    assert s["A"]["mse"] == pytest.approx(0.25) and s["A"]["persistence_mse"] == pytest.approx(1.0)
    assert s["A"]["skill"] == pytest.approx(0.75)
    assert s["_pooled"]["n"] == 4
    assert s["_pooled"]["mean_skill"] == pytest.approx((s["A"]["skill"] + s["B"]["skill"]) / 2)


def test_a_nan_skill_never_passes_the_gate_nor_beats_production():
    from neuropredict.registry import decide, gate
    from neuropredict.settings.schema import RegisterParams

    nan = float("nan")
    scores = {"A": {"dm_t": 0.0, "skill": nan}, "_pooled": {"mean_skill": nan, "max_dm_t": 0.0}}
    good = {"A": {"dm_t": 0.0, "skill": 0.01}, "_pooled": {"mean_skill": 0.01, "max_dm_t": 0.0}}
    assert gate(scores, RegisterParams())
    assert decide(scores, good, RegisterParams())[0] is False
    assert decide(good, scores, RegisterParams())[0] is False  # nothing beats a NaN incumbent by accident


def test_production_that_cannot_score_the_rows_leaves_the_gate_to_decide_alone():
    from types import SimpleNamespace

    from neuropredict.features import ReturnScaler
    from neuropredict.registry import Incomparable, comparable, decide
    from neuropredict.settings.schema import RegisterParams, params_from_dict
    from tests.conftest import TINY_PARAMS

    params = params_from_dict(TINY_PARAMS)  # daily AAPL and MSFT
    scaler = ReturnScaler(window=10, mean={"AAPL": 0.0}, std={"AAPL": 0.01}, pooled_mean=0.0, pooled_std=0.01)
    with pytest.raises(Incomparable, match="it was not trained on MSFT"):
        comparable(SimpleNamespace(intraday=False, scaler=scaler), params)
    with pytest.raises(Incomparable, match="it is an intraday \\(1-minute\\) model and this pipeline trains on 1d"):
        comparable(SimpleNamespace(intraday=True, scaler=scaler), params)
    good = {"A": {"dm_t": 0.0, "skill": 0.01}, "_pooled": {"mean_skill": 0.01, "max_dm_t": 0.0}}
    bad = {"A": {"dm_t": 5.0, "skill": -0.2}, "_pooled": {"mean_skill": -0.2, "max_dm_t": 5.0}}
    assert decide(good, None, RegisterParams(), incomparable="production v3 cannot score")[0] is True
    promoted, reason = decide(bad, None, RegisterParams(), incomparable="production v3 cannot score")
    assert promoted is False and reason.startswith("production v3 cannot score; fails the gate")
