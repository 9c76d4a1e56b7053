"""What a worker tells whoever supervises it: its phase, the partitions it owns and the model
version it serves. In memory for a supervisor in the same process (`ready`), and in a JSON file
(written whole, then renamed) for one outside it: $NEUROPREDICT_WORKER_STATUS."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from neuropredict.files import read_json, write_json

STARTING, WAITING, SERVING, STOPPED = "starting", "waiting", "serving", "stopped"


class WorkerStatus:
    """phase: starting -> (waiting: no model or broker yet ->) serving (owns partitions) -> stopped."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self.phase, self.partitions, self.version = STARTING, [], ""
        self.ready = threading.Event()  # serving (or waiting, as compose's --wait workers do)

    def set(self, phase: str, partitions: list[int] | None = None, version: str | None = None) -> None:
        self.phase = phase
        self.partitions = sorted(partitions) if partitions is not None else self.partitions
        self.version = version if version is not None else self.version
        if phase in (WAITING, SERVING):
            self.ready.set()
        if self.path is not None:
            staging = self.path.with_name(self.path.name + ".tmp")
            write_json(staging, {"phase": self.phase, "partitions": self.partitions, "version": self.version,
                                 "pid": os.getpid()})
            staging.replace(self.path)  # a reader never sees half a file


def read(path: Path) -> dict[str, Any]:
    """A worker's last status ({} before it wrote one)."""
    return read_json(path, default={})
