"""A smoke run of bench/worker_image.py: the worker image's install (serving/requirements.txt, then
the package without dependencies) is smaller than the whole dependency set, holds none of the
training stack, and runs a worker that loads its model from an MLflow server and scores."""

import json

import pytest

from tests.conftest import bench_smoke

pytestmark = pytest.mark.slow


def test_the_slim_worker_install_scores_without_the_training_stack(trained_project, tmp_path):
    out = tmp_path / "worker_image.json"
    bench_smoke("worker_image.py", trained_project, out, timeout=900)
    report = json.loads(out.read_text())
    before, after, served = report["before"], report["after"], report["served"]
    assert after["training_packages_present"] == []
    assert {"dvc", "great_expectations", "keras_tuner", "yfinance"} <= set(before["training_packages_present"])
    assert after["site_packages_mb"] < before["site_packages_mb"] and after["distributions"] < before["distributions"]
    assert served["consumed"] == served["sent"] and served["predicted"] > 0
