"""Train/serve parity on the tiny trained project: and proof that the check can fail."""

import dataclasses

import pytest

from neuropredict import parity, registry
from neuropredict.features import ReturnScaler, load_price_series, series_splits
from neuropredict.forecaster import Forecaster, forecast_period
from neuropredict.settings.paths import paths
from neuropredict.settings.schema import load_params
from tests.conftest import require_apache_kafka

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("broker", ["tansu", "apache"])
def test_replaying_the_test_period_reproduces_the_offline_forecasts(trained_project, use_project, broker):
    if broker == "apache":
        require_apache_kafka()
    use_project(trained_project)
    params = load_params(trained_project / "params.yaml")
    result = parity.check(params, paths(trained_project), broker=broker)
    assert result["passed"] and result["broker"] == broker, parity.format_result(result)
    assert result["matched_rows"] == result["offline_rows"] > 100
    assert result["max_rel_diff"] <= 1e-4 and result["mse_rel_diff"] <= 1e-3
    assert result["bounds"] == ["lower_80", "upper_80", "lower_95", "upper_95"]
    assert result["max_bound_rel_diff"] <= 1e-4


def _served_by(trained_project, change):
    """The production version's offline test forecasts, and those the same version makes when
    serving changes one part of it (`change(forecaster) -> forecaster`): parity's two sides."""
    params = load_params(trained_project / "params.yaml")
    p = paths(trained_project)
    series = load_price_series(p.raw_dir, params.data.symbols, "1d", "Close")
    production = registry.load(params.register.model_name)
    splits = series_splits(series, params.featurize)
    start, end = splits.test_start, splits.end
    offline = forecast_period(production.forecaster, series, start, end)
    online = forecast_period(change(production.forecaster, series), series, start, end)
    return parity.compare(offline, online, production.version)


def test_parity_fails_when_serving_uses_a_different_transform(trained_project, use_project):
    use_project(trained_project)

    def leaky(f, series):  # the seed's mistake: a scaler fitted on ALL data, test period included
        return Forecaster(f.model, ReturnScaler.fit(series, f.window, "2100-01-01"), f.calibration)

    result = _served_by(trained_project, leaky)
    assert not result["passed"]
    assert result["max_rel_diff"] > 1e-4
    assert "FAIL" in parity.format_result(result)


def test_parity_fails_when_serving_widens_the_intervals(trained_project, use_project):
    """Same point forecasts, intervals 5 % wider than calibrated: the bounds are compared too."""
    use_project(trained_project)

    def wider(f, series):
        c = f.calibration
        quantiles = {m: {t: 1.05 * q for t, q in qs.items()} for m, qs in c.quantiles.items()}
        return Forecaster(f.model, f.scaler, dataclasses.replace(c, quantiles=quantiles))

    result = _served_by(trained_project, wider)
    assert not result["passed"] and result["max_rel_diff"] <= 1e-4 < result["max_bound_rel_diff"]
    assert "interval bounds" in parity.format_result(result)


def test_parity_fails_when_the_stream_misses_a_forecast(trained_project, use_project):
    use_project(trained_project)
    result = _served_by(trained_project, lambda f, series: f)
    assert result["passed"]  # the same forecaster on both sides: the comparison itself is exact
    params = load_params(trained_project / "params.yaml")
    series = load_price_series(paths(trained_project).raw_dir, params.data.symbols, "1d", "Close")
    offline = forecast_period(registry.load(params.register.model_name).forecaster, series,
                              series_splits(series, params.featurize).test_start)
    result = parity.compare(offline, offline.iloc[1:], "1")
    assert not result["passed"] and result["matched_rows"] == result["offline_rows"] - 1
