"""The real MLflow registry of a tiny trained project: load by alias, the gate, promote."""

import re
import subprocess
import sys

import numpy as np
import pytest

from neuropredict import promote, registry
from neuropredict.settings.contracts import Topics
from neuropredict.settings.paths import Paths
from neuropredict.settings.schema import load_params
from tests.conftest import copy_project, load_json, project_env, run

pytestmark = pytest.mark.slow

REPRODUCE = """
import json, sys
import pandas as pd
from neuropredict import registry
from neuropredict.settings.schema import load_params
from neuropredict.settings.paths import paths
from neuropredict.evaluation import score_rows
from neuropredict.features import load_price_series, series_splits
from neuropredict.forecaster import forecast_period
params, p = load_params(), paths()
loaded = registry.load(params.register.model_name)
series = load_price_series(p.raw_dir, params.data.symbols, params.data.interval, params.featurize.price_column)
splits = series_splits(series, params.featurize)
scores = score_rows(forecast_period(loaded.forecaster, series, splits.test_start, splits.end))
print(json.dumps({"version": loaded.version, "mse": scores["_pooled"]["mse"]}))
"""


def test_model_loaded_by_alias_in_a_fresh_process_reproduces_the_stage_test_mse(trained_project):
    proc = run([sys.executable, "-c", REPRODUCE], trained_project, project_env(trained_project))
    got = load_json_line(proc.stdout)
    stage = load_json(trained_project / "metrics/test.json")["scores"]["_pooled"]["mse"]
    assert got["mse"] == stage  # exactly: same code path, same bytes


def load_json_line(text):
    import json

    return json.loads(text.strip().splitlines()[-1])


def test_the_pyfunc_alone_turns_raw_windows_into_next_prices(trained_project, use_project):
    import mlflow
    import pandas as pd

    use_project(trained_project)
    from neuropredict import tracking

    tracking.setup()
    model = mlflow.pyfunc.load_model("models:/stock-price-forecaster@production")
    window = model.metadata.metadata["window"]
    prices = list(np.linspace(100, 110, window))
    out = model.predict(pd.DataFrame({"symbol": ["AAPL", "NEWCO"], "prices": [prices, prices]}))
    assert list(out.columns) == ["predicted_price", "lower_80", "upper_80", "lower_95", "upper_95"]
    assert np.all(np.abs(out["predicted_price"] / 110 - 1) < 0.2)
    assert np.all((out["lower_95"] < out["lower_80"]) & (out["lower_80"] < out["predicted_price"])
                  & (out["predicted_price"] < out["upper_80"]) & (out["upper_80"] < out["upper_95"]))
    assert model.metadata.get_input_schema().input_names() == ["symbol", "prices"]


def _cli(root, *args):
    return subprocess.run([sys.executable, "-m", "neuropredict.cli", *args], cwd=root, env=project_env(root),
                          capture_output=True, text=True, timeout=300)


def _sabotage_best_model(root, bias):
    """Fix the tuned model's location at a large daily move: clearly worse than persistence."""
    from neuropredict.forecaster import Forecaster

    best = root / "models" / "tuned" / "best"
    f = Forecaster.load(best)
    dense = f.model.get_layer("next_return")
    kernel, _ = dense.get_weights()
    dense.set_weights([kernel * 0, np.full((1,), bias, dtype=np.float32)])
    f.save(best)


def test_intervals_miscalibrated_on_validation_fail_the_gate(trained_project, tmp_path):
    """A stale or broken calibration: the tuned model's intervals 3x narrower than calibrated."""
    import dataclasses

    from neuropredict.intervals import Calibration

    root = copy_project(trained_project, tmp_path / "copy")
    best = root / "models" / "tuned" / "best"
    calibration = Calibration.load(best)
    narrow = {**calibration.quantiles, "model": {t: q / 3 for t, q in calibration.quantiles["model"].items()}}
    dataclasses.replace(calibration, quantiles=narrow).save(best)
    run([sys.executable, str(root / "pipelines" / "register.py")], root, project_env(root))
    decision = load_json(root / "metrics/register.json")
    assert decision["promoted"] is False and "intervals miscalibrated on validation" in decision["reason"]
    assert re.search(r"AAPL 80 %: \d+\.\d % \(p = ", decision["reason"])
    assert decision["validation_min_coverage_p_80"] < 0.01
    # served on the test period, the online calibration widens them back (statically they cover < 40 %):
    # the gate's check is on validation, where the static calibration is what it is
    assert decision["test_coverage_80"] > 50


def test_a_worse_model_stays_challenger_and_promote_moves_production(trained_project, tmp_path, use_project):
    root = use_project(copy_project(trained_project, tmp_path / "copy"))
    env = project_env(root)
    before = load_json(root / "metrics/register.json")["version"]
    _sabotage_best_model(root, bias=3.0)
    proc = run([sys.executable, str(root / "pipelines" / "register.py")], root, env)
    decision = load_json(root / "metrics/register.json")
    assert decision["promoted"] is False and "fails the gate" in decision["reason"]
    assert "significantly worse than persistence" in proc.stdout
    models = _cli(root, "models").stdout
    new = decision["version"]
    assert f"{new}  challenger" in models.replace("   ", "  ")
    assert any(line.split()[0] == before and "production" in line for line in models.splitlines()[3:])

    refused = _cli(root, "promote", new)  # the evidence speaks against it: one line, nothing moved
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"refusing to promote version {new}: it fails the registration gate" in refused.stderr
    assert "registration gate: FAILS" in refused.stdout and len(refused.stderr.strip().splitlines()) == 1
    # as `promote --force` does, without a second TensorFlow process: the same checks, then the move
    forced = promote.promote(load_params(root / "params.yaml"), Paths(root), Topics(), new, force=True,
                             show=lambda line: None)
    assert (forced.kind, forced.from_version, forced.to_version) == ("force", before, new)
    assert registry.alias_version("stock-price-forecaster") == new
    missing = _cli(root, "promote", "999")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "has no version 999" in missing.stderr and "neuropredict models" in missing.stderr


def test_production_of_another_kind_is_named_and_the_gate_decides_alone(trained_project, tmp_path, use_project):
    """A 1-minute model in production, then the daily pipeline registers: production cannot score
    the daily test rows, so register says why in one line and decides against persistence alone."""
    import dataclasses

    from neuropredict import promotions, tracking
    from neuropredict.forecaster import Forecaster

    root = use_project(copy_project(trained_project, tmp_path / "copy"))
    best = Forecaster.load(root / "models" / "tuned" / "best")
    intraday = tmp_path / "intraday"
    Forecaster(best.model, dataclasses.replace(best.scaler, session_reset=True), best.calibration).save(intraday)
    (intraday / "selection.json").write_text((root / "models/tuned/best/selection.json").read_text())
    tracking.setup()
    name = "stock-price-forecaster"
    params = load_params(root / "params.yaml")
    series = registry.load_series(params, Paths(root))
    other = registry.log_and_register(intraday, name, series, {"interval": "1m"}, {"interval": "1m"})
    promotions.move(name, "production", other, "force", "a 1-minute model in production")
    proc = run([sys.executable, str(root / "pipelines" / "register.py")], root, project_env(root))
    decision = load_json(root / "metrics/register.json")
    why = f"production v{other} cannot score this test period: it is an intraday (1-minute) model"
    assert why in proc.stdout and "Traceback" not in proc.stderr
    assert decision["promoted"] is True and why in decision["reason"]
    assert "passes the gate against persistence" in decision["reason"]
    assert decision["production_test_mean_skill"] is None and decision["previous_production"] == other
    assert registry.alias_version(name) == decision["version"] != other
