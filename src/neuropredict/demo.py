"""`make demo`: the main job end to end on the embedded defaults."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

from neuropredict import config

log = logging.getLogger(__name__)


def dvc_repro() -> None:
    """Run the training pipeline; DVC skips every stage whose inputs did not change."""
    bindir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    started = time.perf_counter()
    subprocess.run([os.path.join(bindir, "dvc"), "repro"], cwd=config.project_root(), env=env, check=True)
    log.info("dvc repro finished in %.1f s", time.perf_counter() - started)


def run(keep: bool = False) -> int:
    dvc_repro()
    print(f"\nMLflow store: {config.tracking_uri()}\nLook at the runs: neuropredict ui  (http://127.0.0.1:5000)")
    return 0
