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

from neuropredict.console import tool, tools_env
from neuropredict.settings.environment import quiet_environment, sqlite_uri

PROJECT_FILES = ("dvc.yaml", "pipelines", "src", "data/snapshot", "data/stream", ".dvcignore", "notebooks",
                 "serving/compose.yaml", "serving/Dockerfile", "serving/worker.py",  # these and the next: `up
                 "serving/prometheus")  # --workers --monitoring`


def copy_project(source: Path, dest: Path, params: dict[str, Any] | None = None) -> Path:
    """Copy what the pipeline needs from `source` to `dest`, with `params` (else source's params.yaml),
    and make it a git + DVC repository. Again on an existing copy: the files are brought up to
    date, and its outputs, DVC cache and MLflow store are kept (dvc repro reruns what changed)."""
    source, dest = Path(source), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for rel in PROJECT_FILES:
        if (source / rel).is_dir():
            shutil.copytree(source / rel, dest / rel, dirs_exist_ok=True)
        elif (source / rel).exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, dest / rel)
    if params is None:
        shutil.copy2(source / "params.yaml", dest / "params.yaml")
    else:
        write_params(dest, params)
    if not (dest / ".dvc").is_dir():
        dvc = tool("dvc")
        for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "config", "core.analytics", "false"]):
            subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest


def overlay(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """base with changes applied section by section (a params file of differences)."""
    out = {**base}
    for key, value in changes.items():
        out[key] = overlay(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def write_params(root: Path, params: dict[str, Any]) -> None:
    (Path(root) / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def scratch_env(root: Path) -> dict[str, str]:
    """Environment for commands run in a copy: its own store, this environment's tools first on PATH."""
    root = Path(root)
    env = tools_env()
    quiet_environment(env)
    env.update({
        "NEUROPREDICT_ROOT": str(root),
        "MLFLOW_TRACKING_URI": sqlite_uri(root),
        "NEUROPREDICT_ARTIFACT_ROOT": (root / "mlruns" / "artifacts").as_uri(),
    })
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    return env
