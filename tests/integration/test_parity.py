"""Train/serve parity on the tiny trained project: and proof that the check can fail."""

import pytest

from neuropredict import parity
from neuropredict.config import load_params, paths
from neuropredict.features import ReturnScaler, load_price_series
from neuropredict.stream.worker import Worker
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


def test_parity_fails_when_serving_uses_a_different_transform(trained_project, use_project, monkeypatch):
    use_project(trained_project)
    params = load_params(trained_project / "params.yaml")
    p = paths(trained_project)
    series = load_price_series(p.raw_dir, params.data.symbols, "1d", "Close")
    original = Worker._use

    def leaky(self, served):  # the seed's mistake: a scaler fitted on ALL data, test period included
        f = served.forecaster
        f.scaler = ReturnScaler.fit(series, f.window, "2100-01-01")
        original(self, served)

    monkeypatch.setattr(Worker, "_use", leaky)
    result = parity.check(params, p)
    assert not result["passed"]
    assert result["max_rel_diff"] > 1e-4
    assert "FAIL" in parity.format_result(result)


def test_parity_fails_when_serving_widens_the_intervals(trained_project, use_project, monkeypatch):
    """Same point forecasts, intervals 5 % wider than calibrated: the bounds are compared too."""
    import dataclasses

    use_project(trained_project)
    params = load_params(trained_project / "params.yaml")
    original = Worker._use

    def wider(self, served):
        c = served.forecaster.calibration
        quantiles = {m: {t: 1.05 * q for t, q in qs.items()} for m, qs in c.quantiles.items()}
        served.forecaster.calibration = dataclasses.replace(c, quantiles=quantiles)
        original(self, served)

    monkeypatch.setattr(Worker, "_use", wider)
    result = parity.check(params, paths(trained_project))
    assert not result["passed"] and result["max_rel_diff"] <= 1e-4 < result["max_bound_rel_diff"]
    assert "interval bounds" in parity.format_result(result)
