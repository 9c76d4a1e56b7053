"""The notebooks execute against a tiny store, so they cannot rot."""

import subprocess
import sys

import nbformat
import pytest

from neuropredict import stream_report
from tests.conftest import REPO, project_env

pytestmark = pytest.mark.slow


def test_every_notebook_executes_without_error(trained_project, tmp_path, use_project):
    use_project(trained_project)
    from neuropredict.features import load_price_series, series_splits
    from neuropredict.forecaster import Forecaster, forecast_period
    from neuropredict.settings.paths import paths
    from neuropredict.settings.schema import load_params

    params = load_params(trained_project / "params.yaml")
    p = paths(trained_project)
    series = load_price_series(p.raw_dir, params.data.symbols, "1d", "Close")
    rows = forecast_period(Forecaster.load(p.model_dir / "best"), series, series_splits(series, params.featurize).test_start)
    stream_report.report(rows.assign(model_version="1"), p.reports_dir / "evaluate", log_to_mlflow=False)

    proc = subprocess.run([sys.executable, str(REPO / "notebooks" / "execute.py"), "--out", str(tmp_path)],
                          cwd=trained_project, env=project_env(trained_project), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    names = sorted(x.name for x in (REPO / "notebooks").glob("*.ipynb"))
    assert len(names) == 3
    for name in names:
        nb = nbformat.read(tmp_path / name, as_version=4)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.output_type == "error"], name
        assert any(o.output_type == "display_data" and "image/png" in o.get("data", {}) for o in outputs), name


def test_committed_notebooks_are_stored_executed():
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(c.get("execution_count") for c in code), f"{path.name} is not stored executed"
