"""Shared fixtures: tiny params, temp project copies with their own MLflow store, and a fresh real
broker per test that asks for one (the product's topic names are fixed, so tests cannot share one):
`broker` (the embedded Tansu), `any_broker` (Tansu, then Apache Kafka), `apache_broker` and
`apache_cluster` (3 nodes).

Every test that touches MLflow gets a temporary sqlite store (never the user's mlruns/), and
every project copy is a real git + DVC repository.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from neuropredict import scratch
from neuropredict.config import TRACE_READS_ENV, sqlite_uri

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# A safety net: a test that forgets to choose a store gets a throwaway one, never the user's mlruns/.
_SCRATCH = Path(tempfile.mkdtemp(prefix="neuropredict-tests-"))
os.environ["MLFLOW_TRACKING_URI"] = sqlite_uri(_SCRATCH)
os.environ["NEUROPREDICT_ARTIFACT_ROOT"] = (_SCRATCH / "artifacts").as_uri()
os.environ.pop("KAFKA_BOOTSTRAP_SERVERS", None)

READS_DIR = ".neuropredict/reads"  # what each stage of trained_project read
REPRO_LOG = ".neuropredict/repro.log"  # and what its `dvc repro` printed
TINY_PARAMS = yaml.safe_load((REPO / "tests" / "data" / "tiny_params.yaml").read_text())


@pytest.fixture
def tiny_params() -> dict:
    return copy.deepcopy(TINY_PARAMS)


def make_project(dest: Path, params: dict) -> Path:
    """A copy of the project (real git + DVC repo) with the given params."""
    return scratch.copy_project(REPO, dest, params)


project_env = scratch.scratch_env
write_params = scratch.write_params


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True,
        timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def distinct_ports(kafka_nodes: int = 1, others: int = 0) -> tuple[int, list[int]]:
    """A first Kafka port whose next `kafka_nodes` ports are free, and `others` more, all distinct
    (ports drawn one by one can repeat, and a node's neighbour can be drawn for something else)."""
    from neuropredict.services import free_ports, port_open

    while True:
        first = free_ports(1)[0]
        block = range(first, first + kafka_nodes)
        if not any(port_open("127.0.0.1", port) for port in block):
            return first, free_ports(others, avoid=block)


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
    # each stage records the params keys and modules it reads (see test_pipeline.py)
    proc = run([str(BIN / "dvc"), "repro"], root, {**project_env(root), TRACE_READS_ENV: str(root / READS_DIR)})
    (root / REPRO_LOG).write_text(proc.stdout + proc.stderr)
    return root


def copy_project(src: Path, dest: Path) -> Path:
    """An independent copy of a trained project: its own DVC cache and its own registry."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def load_json(path: Path):
    import json

    return json.loads(Path(path).read_text())


def apache_kafka_missing() -> str | None:
    """Why Apache Kafka cannot run here (None: it can; its jars are fetched on first use)."""
    from neuropredict import apache_kafka
    from neuropredict.errors import NeuropredictError

    try:
        apache_kafka.java()
        apache_kafka.libs()
    except NeuropredictError as exc:
        return str(exc)
    return None


def require_apache_kafka() -> None:
    """Apache Kafka tests never skip silently in CI: a missing Java or Maven fails the run there."""
    why = apache_kafka_missing()
    if why and os.environ.get("CI"):
        pytest.fail(f"CI runs the Apache Kafka tests, but: {why}")
    if why:
        pytest.skip(why)


def require_postgres() -> None:
    """The tracking-server tests need PostgreSQL's server programs; in CI their absence fails the run."""
    from neuropredict import tracking_server
    from neuropredict.errors import NeuropredictError

    try:
        tracking_server.postgres_bin()
    except NeuropredictError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the tracking-server tests, but: {exc}")
        pytest.skip(str(exc))


def scratch_broker(kind: str, folder: Path, nodes: int = 1):
    """A fresh broker of `kind` on free 127.0.0.1 ports with the product's topics; stopped after."""
    from neuropredict import services
    from neuropredict.config import KafkaParams

    if kind == "apache":
        require_apache_kafka()
    broker = services.start_scratch_broker(kind, folder, KafkaParams(partitions=4), nodes)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def broker(tmp_path):
    """A fresh embedded Kafka broker (Tansu) with the product's topics: its bootstrap address."""
    for started in scratch_broker("tansu", tmp_path):
        yield started.bootstrap


@pytest.fixture(params=["tansu", "apache"])
def any_broker(request, tmp_path):
    """Each broker in turn (a test runs on both): a ScratchBroker (.kind, .bootstrap)."""
    yield from scratch_broker(request.param, tmp_path)


@pytest.fixture
def apache_broker(tmp_path):
    """A fresh single-node Apache Kafka (KRaft) with the product's topics: a ScratchBroker."""
    yield from scratch_broker("apache", tmp_path)


@pytest.fixture
def apache_cluster(tmp_path):
    """A fresh 3-node Apache Kafka cluster; topics with 3 replicas, min.insync.replicas 2."""
    yield from scratch_broker("apache", tmp_path, nodes=3)
