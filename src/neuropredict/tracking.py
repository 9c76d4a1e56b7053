"""MLflow runs: one parent run per `dvc repro`, a nested run per stage, tagged with git and stage.

DVC runs every stage in its own process, so the stages of one `dvc repro` find their common
parent run by the identity of the `dvc` process above them (its PID and start time, read from
/proc), stored as a tag on the parent. Run a stage by hand and it gets a parent of its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from neuropredict import retry
from neuropredict.settings import contracts, environment
from neuropredict.settings.paths import project_root
from neuropredict.settings.schema import as_dict

log = logging.getLogger(__name__)

INVOCATION_TAG = "neuropredict.invocation"
STAGE_TAG = "neuropredict.stage"
GIT_COMMIT_TAG = "git_commit"
PARENT_ENV = "NEUROPREDICT_PIPELINE_RUN_ID"
# The MLflow 3 UI opens an experiment in its GenAI view unless told it is model training.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
T = TypeVar("T")


def connect(root: Path | None = None) -> str:
    """Point MLflow (tracking and registry) at our store; cheap when nothing changed."""
    import mlflow

    uri = environment.tracking_uri(root)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a server's "View run" lines: noise
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def bound_client_retries() -> None:
    """For a long-running service with retry loops of its own (the worker's metrics and alias
    check): MLflow's HTTP client would retry one call for about 4 minutes (7 retries, backoff up to
    120 s) before anything is logged. Values the user set are kept."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def client(root: Path | None = None):
    from mlflow.tracking import MlflowClient

    uri = connect(root)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def setup(experiment: str = contracts.EXPERIMENT_NAME, root: Path | None = None) -> str:
    """Point MLflow at our store, create the experiment if needed; return its id."""
    import mlflow

    uri = connect(root)
    found = with_retry(lambda: mlflow.get_experiment_by_name(experiment))
    if found is not None:
        exp_id = found.experiment_id
        if found.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
            mlflow.tracking.MlflowClient().set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    else:
        location = environment.artifact_root(root) if uri.startswith("sqlite") else None
        try:
            exp_id = mlflow.create_experiment(experiment, artifact_location=location,
                                              tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
        except Exception:  # another process created it first
            exp_id = mlflow.get_experiment_by_name(experiment).experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def with_retry(fn: Callable[[], T], attempts: int = 8, first_delay_s: float = 0.2) -> T:
    """Run fn, retrying while SQLite says `database is locked` (one writer at a time), or while
    another process is creating a new store's tables (MLflow's migration: `_alembic_tmp_...
    already exists`, seen when `up --guard` and `status` open a fresh store at once)."""
    return retry.retry(fn, "MLflow store busy", retry.Backoff(first_delay_s, 5.0), attempts=attempts,
                       retry_if=_store_busy, level=logging.INFO)


def _store_busy(exc: Exception) -> bool:
    text = str(exc).lower()
    return "locked" in text or "_alembic_tmp" in text


def git_commit(root: Path | None = None) -> str:
    root = root or project_root()
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def measured(command: str, root: Path | None = None) -> dict[str, str]:
    """The stamp a committed report carries, so the docs rendered from it say what produced it:
    the command, the code's commit (-dirty: with uncommitted changes) and the date (UTC)."""
    from datetime import datetime, timezone

    return {"command": command, "commit": git_commit(root),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def flatten(prefix: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'prefix.a.b': 1}, lists as text: for mlflow.log_params."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping):
            flat.update(flatten(name, value))
        else:
            flat[name] = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
    return flat


@contextlib.contextmanager
def stage_run(stage: str, section: Any = None, root: Path | None = None) -> Iterator[Any]:
    """Open the stage's nested run under this `dvc repro`'s parent run; close both on exit."""
    import mlflow

    setup(root=root)
    commit = git_commit(root)
    parent_id = _pipeline_parent_run(commit)
    tags = {STAGE_TAG: stage, GIT_COMMIT_TAG: commit, "mlflow.source.git.commit": commit}
    with mlflow.start_run(run_id=parent_id):
        with mlflow.start_run(run_name=stage, nested=True, tags=tags) as run:
            if section is not None:
                mlflow.log_params(flatten(stage, as_dict(section)))
            log.info("MLflow run %s (stage %s) in %s", run.info.run_id, stage, environment.tracking_uri(root))
            yield run


def _pipeline_parent_run(commit: str) -> str:
    import mlflow

    explicit = os.environ.get(PARENT_ENV)
    if explicit:
        return explicit
    invocation = _invocation_id()
    client = mlflow.tracking.MlflowClient()
    exp_id = mlflow.get_experiment_by_name(contracts.EXPERIMENT_NAME).experiment_id
    found = client.search_runs([exp_id], filter_string=f"tags.`{INVOCATION_TAG}` = '{invocation}'",
                               max_results=1)
    if found:
        return found[0].info.run_id
    tags = {INVOCATION_TAG: invocation, GIT_COMMIT_TAG: commit, STAGE_TAG: "pipeline"}
    run = client.create_run(exp_id, run_name="pipeline", tags=tags)
    return run.info.run_id


def _invocation_id() -> str:
    """host:pid:start-time of the nearest `dvc` ancestor process, else of this process."""
    pid = os.getpid()
    chosen = pid
    for _ in range(12):  # a stage runs under sh under dvc; a few levels suffice
        cmd = _proc_cmdline(pid)
        if cmd and (any(Path(a).name == "dvc" for a in cmd[:2]) or cmd[1:3] == ["-m", "dvc"]):
            chosen = pid
            break
        parent = _proc_parent(pid)
        if parent is None or parent < 1:
            break
        pid = parent
    return f"{socket.gethostname()}:{chosen}:{_proc_start_ticks(chosen)}"


def _proc_cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _proc_stat_fields(pid: int) -> list[str]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text[text.rfind(")") + 2:].split()  # the name field may hold spaces and ')'


def _proc_parent(pid: int) -> int | None:
    fields = _proc_stat_fields(pid)
    return int(fields[1]) if fields else None


def _proc_start_ticks(pid: int) -> str:
    fields = _proc_stat_fields(pid)
    return fields[19] if len(fields) > 19 else str(int(time.time()))
