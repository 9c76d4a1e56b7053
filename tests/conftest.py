"""Shared fixtures: tiny params, temp project copies with their own MLflow store, one trained
project per session, and brokers shared by the whole run: one embedded Tansu and one Apache Kafka
(started when a test first asks for it). Each test gets its own topics and consumer group on them
(`stream`, `any_stream`, `apache_stream`: a Stream), as quix-streams' tests do.

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
import uuid
from dataclasses import dataclass
from pathlib import Path

import filelock
import pytest
import yaml

from neuropredict import brokers, scratch
from neuropredict.settings.contracts import TOPIC_PREFIX_ENV, Topics
from neuropredict.settings.environment import sqlite_uri
from neuropredict.settings.schema import KafkaParams

pytest_plugins = ["tests.tooling.timing"]  # NEUROPREDICT_TEST_REPORT: the run's timing report (.ci/run)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TRACE_READS = REPO / "tests" / "tooling" / "trace_reads"  # a sitecustomize: what each stage reads

# A safety net: a test that forgets to choose a store gets a throwaway one, never the user's mlruns/.
_SCRATCH = Path(tempfile.mkdtemp(prefix="neuropredict-tests-"))
os.environ["MLFLOW_TRACKING_URI"] = sqlite_uri(_SCRATCH)
os.environ["NEUROPREDICT_ARTIFACT_ROOT"] = (_SCRATCH / "artifacts").as_uri()
os.environ.pop("KAFKA_BOOTSTRAP_SERVERS", None)
os.environ.pop(TOPIC_PREFIX_ENV, None)

READS_DIR = ".neuropredict/reads"  # what each stage of trained_project read
REPRO_LOG = ".neuropredict/repro.log"  # and what its `dvc repro` printed
TINY_PARAMS = yaml.safe_load((REPO / "tests" / "data" / "tiny_params.yaml").read_text())
KAFKA = KafkaParams(partitions=4)


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


def bench_smoke(script: str, root: Path, out: Path, timeout: float) -> subprocess.CompletedProcess:
    """`python bench/SCRIPT --smoke --out OUT` in a trained project's copy; it must succeed."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), "--smoke", "--out", str(out)], cwd=root,
                          env=project_env(root), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def distinct_ports(kafka_nodes: int = 1, others: int = 0) -> tuple[int, list[int]]:
    """A first Kafka port whose next `kafka_nodes` ports are free, and `others` more, all distinct
    (ports drawn one by one can repeat, and a node's neighbour can be drawn for something else)."""
    from neuropredict.procs import free_ports, port_open

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
def trained_project(tmp_path_factory, worker_id) -> Path:
    """One tiny end-to-end `dvc repro` shared by the tests that need a registered model. With
    several test processes (pytest-xdist) the first one trains and each works on its own copy."""
    if worker_id == "master":
        return _train(tmp_path_factory.mktemp("trained") / "project")
    shared = tmp_path_factory.getbasetemp().parent / "trained" / "project"  # the run's, not the process's
    with filelock.FileLock(f"{shared.parent}.lock"):
        if not (shared / REPRO_LOG).is_file():
            _train(shared)
    return copy_project(shared, tmp_path_factory.mktemp("trained") / "project")


def _train(root: Path) -> Path:
    make_project(root, TINY_PARAMS)
    # each stage records the params keys and modules it reads (see test_pipeline.py)
    env = {**project_env(root), "NEUROPREDICT_TRACE_READS": str(root / READS_DIR),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TRACE_READS), os.environ.get("PYTHONPATH")]))}
    proc = run([str(BIN / "dvc"), "repro"], root, env)
    (root / REPRO_LOG).write_text(proc.stdout + proc.stderr)  # last: the project is complete
    return root


def copy_project(src: Path, dest: Path) -> Path:
    """An independent copy of a trained project: its own DVC cache and its own registry."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def copy_with_params(src: Path, dest: Path, changes: dict):
    """A copy of a trained project with its params changed section by section (scratch.overlay),
    and the params it then has."""
    from neuropredict.settings.schema import load_params

    root = copy_project(src, dest)
    write_params(root, scratch.overlay(yaml.safe_load((root / "params.yaml").read_text()), changes))
    return root, load_params(root / "params.yaml")


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


# ---- brokers shared by the run, and each test's own topics on them ----


@dataclass
class Stream:
    """One test's topics and consumer group on a broker (shared with other tests, or its own)."""

    broker: brokers.ScratchBroker
    topics: Topics

    @property
    def kind(self) -> str:
        return self.broker.kind

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def env(self) -> dict[str, str]:
        """What a worker process needs to serve this stream."""
        return {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, TOPIC_PREFIX_ENV: self.topics.prefix}


def new_stream(broker: brokers.ScratchBroker) -> Stream:
    """Fresh topics (4 partitions) and a fresh group on `broker`."""
    topics = Topics(f"t{uuid.uuid4().hex[:10]}.")
    broker.create(KAFKA, topics)
    return Stream(broker, topics)


@pytest.fixture(scope="session")
def tansu(tmp_path_factory):
    """The run's embedded broker (Tansu, in memory)."""
    broker = brokers.start_scratch_broker("tansu", tmp_path_factory.mktemp("tansu"), KAFKA)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def apache(tmp_path_factory):
    """The run's single-node Apache Kafka (KRaft), started when a test first needs it."""
    require_apache_kafka()
    broker = brokers.start_scratch_broker("apache", tmp_path_factory.mktemp("apache"), KAFKA)
    yield broker
    broker.stop()


@pytest.fixture
def stream(tansu) -> Stream:
    """This test's own topics and group on the embedded broker."""
    return new_stream(tansu)


@pytest.fixture(params=["tansu", "apache"])
def any_stream(request) -> Stream:
    """Each broker in turn (a test runs on both): this test's own topics and group there."""
    return new_stream(request.getfixturevalue(request.param))


@pytest.fixture
def apache_stream(apache) -> Stream:
    """This test's own topics and group on the run's Apache Kafka."""
    return new_stream(apache)
