"""A smoke run of bench/worker_image.py: the worker image's install (serving/requirements.txt, then
the package without dependencies) is smaller than the whole dependency set, holds none of the
training stack, and runs a worker that loads its model from an MLflow server and scores."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, project_env

pytestmark = pytest.mark.slow


def test_the_slim_worker_install_scores_without_the_training_stack(trained_project, tmp_path):
    out = tmp_path / "worker_image.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "worker_image.py"), "--smoke", "--out", str(out)],
                          cwd=trained_project, env=project_env(trained_project), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    before, after, served = report["before"], report["after"], report["served"]
    assert after["training_packages_present"] == []
    assert {"dvc", "great_expectations", "keras_tuner", "yfinance"} <= set(before["training_packages_present"])
    assert after["site_packages_mb"] < before["site_packages_mb"] and after["distributions"] < before["distributions"]
    assert served["consumed"] == served["sent"] and served["predicted"] > 0
