"""Scratch copies of the project: a real git + DVC repository with its own MLflow store.

The tests and the benchmarks run the pipeline in such copies, so nothing they do touches your
data, models or mlruns/.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from neuropredict.console import quiet_environment, tool, tools_env

PROJECT_FILES = ("dvc.yaml", "pipelines", "src", "data/snapshot", ".dvcignore", "notebooks")


def copy_project(source: Path, dest: Path, params: dict[str, Any] | None = None) -> Path:
    """Copy what the pipeline needs from `source` to `dest`, with `params` (else source's params.yaml),
    and make it a git + DVC repository."""
    source, dest = Path(source), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for rel in PROJECT_FILES:
        if (source / rel).is_dir():
            shutil.copytree(source / rel, dest / rel)
        elif (source / rel).exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, dest / rel)
    if params is None:
        shutil.copy2(source / "params.yaml", dest / "params.yaml")
    else:
        write_params(dest, params)
    dvc = tool("dvc")
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "config", "core.analytics", "false"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest


def write_params(root: Path, params: dict[str, Any]) -> None:
    (Path(root) / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def scratch_env(root: Path) -> dict[str, str]:
    """Environment for commands run in a copy: its own store, this environment's tools first on PATH."""
    root = Path(root)
    env = tools_env()
    quiet_environment(env)
    env.update({
        "NEUROPREDICT_ROOT": str(root),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
        "NEUROPREDICT_ARTIFACT_ROOT": (root / "mlruns" / "artifacts").as_uri(),
    })
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    return env
