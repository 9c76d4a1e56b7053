"""Shared fixtures: tiny params, temp project copies with their own MLflow store, one real broker.

Every test that touches MLflow gets a temporary sqlite store (never the user's mlruns/), and
every project copy is a real git + DVC repository.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

# Small enough for seconds per stage, real enough to exercise every path (both cells, all splits).
TINY_PARAMS = {
    "seed": 7,
    "data": {"symbols": ["AAPL", "MSFT"], "start": "2022-01-01", "end": "2024-12-31", "interval": "1d",
             "source": "snapshot", "download_timeout_s": 5},
    "validate": {"max_gap_days": 5, "max_abs_log_return": 0.4},
    "featurize": {"price_column": "Close", "window": 10, "validation_start": "2023-07-01",
                  "test_start": "2024-07-01"},
    "tune": {"tuner": "random", "cells": ["lstm", "gru"], "trials_per_cell": 1, "max_epochs": 2,
             "patience": 1, "batch_size": 64, "units": [4], "layers": [1], "dropout": [0.0, 0.0],
             "learning_rate": [0.001, 0.003]},
    "register": {"model_name": "stock-price-forecaster", "max_dm_t": 2.0, "min_mean_skill": -0.5},
    "kafka": {"partitions": 4, "replication_factor": 1},
    "serving": {"max_poll_records": 2000, "poll_timeout_ms": 100, "fetch_max_wait_ms": 10, "alias_poll_interval_s": 0.5,
                "metrics_interval_s": 1.0, "producer_linger_ms": 5, "producer_batch_bytes": 262144,
                "compression": "lz4", "model_threads": 1, "restore_lookback_max": 100000},
}
PROJECT_FILES = ("dvc.yaml", "pipelines", "src", "data/snapshot", ".dvcignore", "notebooks")


@pytest.fixture
def tiny_params() -> dict:
    return copy.deepcopy(TINY_PARAMS)


def write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def make_project(dest: Path, params: dict) -> Path:
    """A copy of the project (real git + DVC repo) with the given params."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in PROJECT_FILES:
        src = REPO / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel)
        elif src.exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    write_params(dest, params)
    run(["git", "init", "-q"], dest)
    run([str(BIN / "dvc"), "init", "-q"], dest)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], dest)
    return dest


def project_env(root: Path) -> dict[str, str]:
    """Environment for commands run inside a project copy: its own store, this venv first on PATH."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "NEUROPREDICT_ROOT": str(root),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
        "NEUROPREDICT_ARTIFACT_ROOT": (root / "mlruns" / "artifacts").as_uri(),
    }


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True,
        timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "dvc"), *args], root, project_env(root), check=check)


@pytest.fixture
def use_project(monkeypatch):
    """Point this process's config (root, MLflow store) at a project copy."""

    def activate(root: Path) -> Path:
        for key, value in project_env(root).items():
            if key.startswith(("NEUROPREDICT_", "MLFLOW_")):
                monkeypatch.setenv(key, value)
        return root

    return activate


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory) -> Path:
    """One tiny end-to-end `dvc repro` shared by the tests that need a registered model."""
    root = make_project(tmp_path_factory.mktemp("trained") / "project", TINY_PARAMS)
    dvc(root, "repro")
    return root


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]


def copy_project(src: Path, dest: Path) -> Path:
    """An independent copy of a trained project: its own DVC cache and its own registry."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def load_json(path: Path):
    import json

    return json.loads(Path(path).read_text())


@pytest.fixture
def broker(tmp_path):
    """A fresh embedded Kafka broker (Tansu) on a free 127.0.0.1 port, with the product's topics."""
    from neuropredict import kafka_io, services
    from neuropredict.config import KafkaParams

    port = services.free_port()
    svc = services.start_broker(port, tmp_path / "kafka.log")
    bootstrap = f"127.0.0.1:{port}"
    kafka_io.ensure_topics(KafkaParams(partitions=4), bootstrap)
    try:
        yield bootstrap
    finally:
        services._stop_pid(svc.pid)
