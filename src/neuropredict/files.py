"""Small JSON files: metrics for DVC, selections and reports (one home for reading and writing them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: Path, payload: Any, indent: int = 2) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=indent, default=str) + "\n")


def read_json(path: Path, default: Any = None) -> Any:
    """The file's content, or `default` when it is missing or unreadable (when one is given)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        if default is None:
            raise
        return default
