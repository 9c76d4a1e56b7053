"""GARCH(1,1), the online-calibrated intervals and the conditional backtests (volatility.py,
adaptive.py, backtests.py)."""

import numpy as np
import pandas as pd
import pytest

from neuropredict import adaptive, backtests, intervals, volatility
from neuropredict.intervals import Calibration


def _simulate_garch(alpha: float, beta: float, v: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r, s2 = np.empty(n), v
    for t in range(n):
        r[t] = np.sqrt(s2) * rng.standard_normal()
        s2 = (1 - alpha - beta) * v + alpha * r[t] ** 2 + beta * s2
    return r


def test_the_garch_fit_recovers_the_parameters_of_a_simulated_series():
    alpha, beta = volatility.garch_fit(_simulate_garch(0.10, 0.85, 4e-4, 20_000, seed=0), 4e-4)
    assert alpha == pytest.approx(0.10, abs=0.02) and beta == pytest.approx(0.85, abs=0.03)
    # no clustering at all: the fit puts (almost) no weight on the last squared return
    alpha, _ = volatility.garch_fit(np.random.default_rng(1).normal(0, 0.02, 20_000), 4e-4)
    assert alpha < 0.02


def test_the_window_recursion_is_the_fitted_filter_and_ewma_is_its_integrated_special_case():
    prices = 100 * np.exp(np.cumsum(np.random.default_rng(2).normal(0, 0.02, 30)))
    windows, sd = prices[None, :], np.array([0.015])
    returns = np.diff(np.log(prices))
    full = volatility.garch_variances(np.append(returns, 0.0), 0.1, 0.85, sd[0] ** 2)
    np.testing.assert_allclose(volatility.garch_scale(windows, sd, np.array([0.1]), np.array([0.85])) ** 2,
                               full[-1:], rtol=1e-12)
    lam = 0.94
    np.testing.assert_allclose(volatility.garch_scale(windows, sd, np.array([1 - lam]), np.array([lam])),
                               volatility.ewma_scale(windows, sd, lam), rtol=1e-12)


def test_kupiec_and_christoffersen_match_their_likelihood_ratios():
    # Jorion's textbook case: 10 exceptions in 250 days at 99 %: LR = 12.96
    assert backtests.kupiec_p(10, 250, 0.99) == pytest.approx(0.000318, rel=0.01)
    assert backtests.kupiec_p(50, 250, 0.80) == pytest.approx(1.0)
    clustered = np.repeat(np.tile([False, True], 25), [8, 2] * 25)  # misses two at a time
    assert backtests.christoffersen_p(backtests.transitions(clustered)) < 1e-4
    independent = np.random.default_rng(3).random(2000) < 0.2
    assert backtests.christoffersen_p(backtests.transitions(independent)) > 0.01
    np.testing.assert_array_equal(backtests.transitions(np.array([0, 1, 1, 0, 0], bool)), [[1, 1], [1, 1]])


def _regime_rows(n: int = 1000, jump_at: int = 500, seed: int = 4) -> tuple[pd.DataFrame, Calibration]:
    """One symbol whose volatility triples halfway while its forecast scale stays put."""
    rng = np.random.default_rng(seed)
    sd = np.where(np.arange(n) < jump_at, 0.01, 0.03)
    r = sd * rng.standard_normal(n)
    last = 100 * np.exp(np.concatenate(([0.0], np.cumsum(r)[:-1])))
    calibration = Calibration((0.8,), {"model": {"80": 1.2816}}, 0.94, "fit", n, 1.0, online=True)
    scale = 0.01
    rows = pd.DataFrame({"symbol": "AAA", "time": np.arange(n), "persistence": last, "actual": last * np.exp(r),
                         "lower_80": last * np.exp(-1.2816 * scale), "upper_80": last * np.exp(1.2816 * scale)})
    return rows, calibration


def test_the_online_quantile_recovers_coverage_after_volatility_triples():
    rows, calibration = _regime_rows()
    rows = adaptive.serve(rows, calibration)
    inside = {m: (rows["actual"] >= rows[intervals.column(m, "lower", 0.8)])
              & (rows["actual"] <= rows[intervals.column(m, "upper", 0.8)]) for m in ("model", "conformal")}
    late = rows.index >= 600  # a hundred sessions after the jump
    assert inside["conformal"][late].mean() < 0.45  # the static interval is three times too narrow
    assert inside["model"][late].mean() == pytest.approx(0.8, abs=0.06)
    # on the calm half it stays what the registered quantile gave
    assert inside["model"][:500].mean() == pytest.approx(0.8, abs=0.05)
    # static: nothing changes
    static = Calibration((0.8,), {"model": {"80": 1.2816}}, 0.94, "fit", 1000, 1.0, online=False)
    assert adaptive.serve(rows[["symbol", "time", "persistence", "actual", "lower_80", "upper_80"]], static).equals(
        rows[["symbol", "time", "persistence", "actual", "lower_80", "upper_80"]])


def test_each_tracker_widens_after_a_miss_and_the_weights_move_to_the_trackers_with_the_lower_loss():
    q0, state = 1.0, np.array([adaptive.start(1.0)])
    used, after = adaptive.track(state, q0, 0.8, np.zeros((1, 3)), np.ones((1, 3)), np.array([[2.0, 0.0, np.nan]]))
    assert used[0, 0] == pytest.approx(1.0)  # all trackers start at the registered quantile
    q1 = 1.0 + adaptive.STEPS * 0.8  # the miss: each widens by its step times 1 - alpha ...
    q2 = q1 - adaptive.STEPS * q0 * 0.2  # ... the hit narrows it by its step times alpha
    np.testing.assert_allclose(after[0, :adaptive.K], q2)
    weights = after[0, adaptive.K:]
    assert weights.sum() == pytest.approx(1.0) and used[0, 2] == pytest.approx(float(weights @ q2))
    # the score 0 after the miss: the trackers that widened least lose least on it
    assert np.all(np.diff(weights) < 0)
    # a NaN (the outcome not known yet) leaves the state where it is
    _, same = adaptive.track(after, q0, 0.8, np.zeros((1, 1)), np.ones((1, 1)), np.array([[np.nan]]))
    np.testing.assert_array_equal(same, after)


def test_rows_of_several_series_are_tracked_independently():
    rows, calibration = _regime_rows()
    other = rows.assign(symbol="BBB", actual=rows["persistence"])  # never misses
    both = adaptive.serve(pd.concat([rows, other], ignore_index=True), calibration)
    alone = adaptive.serve(rows, calibration)
    np.testing.assert_allclose(both.loc[both["symbol"] == "AAA", "lower_80"].to_numpy(), alone["lower_80"].to_numpy())
    served, static = both.loc[both["symbol"] == "BBB", "lower_80"].to_numpy(), other["lower_80"].to_numpy()
    assert served[0] == static[0] and (served[1:] > static[1:]).all()  # narrower after each hit


def test_the_conditional_table_shows_the_static_interval_failing_in_the_turbulent_third():
    rows, calibration = _regime_rows()
    table = backtests.conditional(adaptive.serve(rows, calibration), (0.8,))
    static, online = table["conformal"]["80"], table["model"]["80"]
    assert static["coverage_high_volatility"] < 50 < 80 < static["coverage_low_volatility"]
    assert abs(online["coverage_high_volatility"] - 80) < abs(static["coverage_high_volatility"] - 80)
    assert static["kupiec_p"] < 1e-6 and static["rows_after_jumps"] >= 20
    frame = backtests.tercile_frame(table)
    assert len(frame) == 2 * 3 and set(frame["tercile"]) == set(backtests.TERCILES)
    assert "Kupiec p" in backtests.format_conditional(table)


def test_the_scalar_and_the_vectorised_tracker_do_the_same_arithmetic():
    """A few long series (a backlog) go through plain Python, many through NumPy: one result."""
    rng = np.random.default_rng(5)
    states = np.array([adaptive.start(1.2)] * 3)
    centre, scale = rng.normal(0, 0.001, (3, 200)), np.full((3, 200), 0.02)
    realised = rng.normal(0, 0.03, (3, 200))
    realised[:, -1], realised[1, 150:] = np.nan, np.nan  # the open forecast, and a shorter series' padding
    fast = adaptive._track_vectorised(states, 1.2, 0.95, centre, scale, realised, adaptive.STEPS)
    slow = adaptive._track_scalar(states, 1.2, 0.95, centre, scale, realised, adaptive.STEPS)
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("series", [2, 8])  # the scalar path below VECTORISE_FROM rows in all, NumPy above
def test_levels_tracked_in_one_call_match_each_level_tracked_alone(series):
    """A worker moves every level's trackers in one call (a quantile and a level per row): the
    same states and served quantiles, to the bit, as one call per level."""
    rng = np.random.default_rng(7)
    centre, scale = rng.normal(0, 0.001, (series, 40)), np.full((series, 40), 0.02)
    realised = rng.normal(0, 0.03, (series, 40))
    realised[:, -1] = np.nan
    levels, q0 = (0.8, 0.95), (1.1, 1.9)
    alone = [adaptive.track(np.array([adaptive.start(q)] * series), q, p, centre, scale, realised)
             for q, p in zip(q0, levels)]
    used, after = adaptive.track(np.array([adaptive.start(q) for q in q0 for _ in range(series)]),
                                 np.repeat(q0, series), np.repeat(levels, series),
                                 np.vstack([centre, centre]), np.vstack([scale, scale]), np.vstack([realised, realised]))
    np.testing.assert_array_equal(used, np.vstack([u for u, _ in alone]))
    np.testing.assert_array_equal(after, np.vstack([a for _, a in alone]))
