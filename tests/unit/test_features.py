import numpy as np
import pandas as pd
import pytest

from neuropredict.errors import ConfigError
from neuropredict.features import ReturnScaler, Splits, make_windows, resolve_splits, series_splits, split_by_date
from neuropredict.settings.schema import FeaturizeParams


def _series(n=300, seed=0, start="2022-01-03", freq="B"):
    rng = np.random.default_rng(seed)
    idx = pd.date_range(start, periods=n, freq=freq)
    return pd.Series(100 * np.exp(np.cumsum(rng.normal(0, 0.02, n))), index=idx)


PARAMS = Splits(validation_start="2022-09-01", test_start="2022-11-01", end="2023-02-24")


def test_scaler_statistics_come_from_the_training_period_alone():
    s = {"A": _series(seed=1), "B": _series(seed=2)}
    fitted = ReturnScaler.fit(s, 5, PARAMS.validation_start)
    train_only = {k: v[v.index < pd.Timestamp(PARAMS.validation_start)] for k, v in s.items()}
    expected = np.log(train_only["A"]).diff().dropna()
    assert fitted.mean["A"] == pytest.approx(expected.mean(), rel=1e-12)
    assert fitted.std["A"] == pytest.approx(expected.std(ddof=0), rel=1e-12)

    # a change after the training period moves nothing ...
    later = {k: v.copy() for k, v in s.items()}
    later["A"].iloc[-20:] *= 3.0
    later["A"].loc[pd.Timestamp(PARAMS.validation_start):] *= 1.5
    assert ReturnScaler.fit(later, 5, PARAMS.validation_start) == fitted
    # ... while a change inside it does (so the test above can fail)
    earlier = {k: v.copy() for k, v in s.items()}
    earlier["A"].iloc[10] *= 1.2  # one price: the mean return telescopes, the spread does not
    assert ReturnScaler.fit(earlier, 5, PARAMS.validation_start).std["A"] != fitted.std["A"]


def test_windows_end_before_their_target_and_splits_follow_target_dates():
    s = {"A": _series()}
    rows = make_windows(s, 5)
    prices = s["A"].to_numpy()
    assert rows.windows.shape == (len(prices) - 5, 5)
    np.testing.assert_array_equal(rows.windows[0], prices[:5])
    assert rows.targets[0] == prices[5]
    assert rows.target_times[0] == s["A"].index[5]
    parts = split_by_date(rows, PARAMS)
    assert sum(len(p) for p in parts.values()) == len(rows)
    v, t = np.datetime64(pd.Timestamp(PARAMS.validation_start)), np.datetime64(pd.Timestamp(PARAMS.test_start))
    assert parts["train"].target_times.max() < v <= parts["validation"].target_times.min()
    assert parts["validation"].target_times.max() < t <= parts["test"].target_times.min()


def test_intraday_windows_never_span_two_sessions():
    idx = pd.DatetimeIndex(list(pd.date_range("2026-03-20 09:30", periods=8, freq="min"))
                           + list(pd.date_range("2026-03-23 09:30", periods=8, freq="min")))
    s = {"A": pd.Series(np.linspace(100, 101, 16), index=idx)}
    rows = make_windows(s, 5, session_reset=True)
    assert len(rows) == 6  # 3 per session of 8 bars with W=5
    days = pd.DatetimeIndex(rows.target_times).normalize()
    assert set(days.strftime("%m-%d")) == {"03-20", "03-23"}


def test_feature_round_trip_target_to_price_is_exact():
    s = {"A": _series(), "B": _series(seed=3)}
    scaler = ReturnScaler.fit(s, 6, PARAMS.validation_start)
    rows = make_windows(s, 6)
    mu, sd = scaler.stats(rows.symbols)
    y = scaler.to_target(rows.windows, rows.targets, mu, sd)
    np.testing.assert_allclose(scaler.to_price(y, rows.windows[:, -1], mu, sd), rows.targets, rtol=1e-5)
    x = scaler.to_model_input(rows.windows, mu, sd)
    assert x.shape == (len(rows), 5, 1) and x.dtype == np.float32


def test_unknown_symbol_falls_back_to_pooled_statistics():
    scaler = ReturnScaler.fit({"A": _series()}, 5, PARAMS.validation_start)
    mu, sd = scaler.stats(["A", "ZZZ"])
    assert mu[1] == scaler.pooled_mean and sd[1] == scaler.pooled_std


def test_scaler_survives_json(tmp_path):
    scaler = ReturnScaler.fit({"A": _series()}, 5, PARAMS.validation_start)
    scaler.save(tmp_path / "s.json")
    assert ReturnScaler.load(tmp_path / "s.json") == scaler


def test_splits_are_counted_back_from_the_last_session_and_move_with_new_data():
    s = {"A": _series(n=300), "B": _series(n=290, seed=4)}  # B ends 10 sessions earlier
    params = FeaturizeParams(window=5, validation_sessions=40, test_sessions=30)
    days = s["A"].index
    splits = series_splits(s, params)
    assert splits == Splits(str(days[-70].date()), str(days[-30].date()), str(days[-1].date()))
    parts = split_by_date(make_windows(s, 5), splits)
    assert len(np.unique(pd.DatetimeIndex(parts["test"].target_times).normalize())) == 30
    assert len(np.unique(pd.DatetimeIndex(parts["validation"].target_times).normalize())) == 40
    # ten new sessions move all three periods by ten sessions
    longer = {"A": _series(n=310), "B": _series(n=300, seed=4)}
    moved = series_splits(longer, params)
    later = longer["A"].index
    assert moved.test_start == str(later[-30].date()) == str(days[-20].date())
    assert moved.validation_start == str(days[-60].date()) and moved.end == str(later[-1].date())
    assert moved.test_period == f"{moved.test_start}..{moved.end}"


def test_bundled_defaults_reproduce_the_2023_and_2024_split():
    from neuropredict.settings.schema import load_params
    from tests.conftest import REPO

    params = load_params(REPO / "params.yaml")
    frame = pd.read_csv(REPO / "data/snapshot/daily/AAPL.csv")
    splits = resolve_splits(params.featurize, frame["Date"])
    assert (splits.validation_start, splits.test_start, splits.end) == ("2023-01-03", "2024-01-02", "2024-12-31")


def test_the_regime_2020_variant_trains_through_2018_calibrates_on_2019_and_tests_on_2020():
    import yaml

    from neuropredict import scratch
    from neuropredict.settings.schema import params_from_dict
    from tests.conftest import REPO

    params = params_from_dict(scratch.overlay(yaml.safe_load((REPO / "params.yaml").read_text()),
                                              yaml.safe_load((REPO / "params-regime-2020.yaml").read_text())))
    frame = pd.read_csv(REPO / "data/snapshot/daily/AAPL.csv")
    frame = frame[frame["Date"] <= params.data.end]
    splits = resolve_splits(params.featurize, frame["Date"])
    assert (splits.validation_start, splits.test_start, splits.end) == ("2019-01-02", "2020-01-02", "2020-12-31")


def test_garch_parameters_are_fitted_per_symbol_on_the_training_period_alone():
    s = _series(400, seed=3)
    scaler = ReturnScaler.fit({"A": s}, 5, "2022-09-01")
    later = s.copy()
    later[later.index >= "2022-09-01"] *= np.exp(np.random.default_rng(9).normal(0, 0.2, (later.index >= "2022-09-01").sum()))
    assert ReturnScaler.fit({"A": later}, 5, "2022-09-01").garch == scaler.garch  # later prices play no part
    alpha, beta = scaler.garch["A"]
    assert 0 <= alpha and 0 <= beta and alpha + beta < 1
    a, b = scaler.garch_params(["A", "UNSEEN"])
    assert a.tolist() == [alpha, alpha] and b.tolist() == [beta, beta]  # unseen: the median of the fitted


def test_too_few_sessions_is_one_line_naming_the_keys():
    with pytest.raises(ConfigError, match="featurize.validation_sessions \\+ test_sessions = 70 leave none"):
        resolve_splits(FeaturizeParams(window=5, validation_sessions=40, test_sessions=30),
                       pd.bdate_range("2024-01-01", periods=70))
