"""A pytest plugin: with NEUROPREDICT_TEST_REPORT set to a path, the run writes its timing report
there (tests, outcomes, pytest's seconds, the whole run's seconds since NEUROPREDICT_RUN_STARTED,
the slowest tests, the test processes), stamped with the commit, so the docs can show it (.ci/run
sets both). Under pytest-xdist the controller receives every worker's reports and writes it."""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path

_seconds: dict[str, float] = defaultdict(float)
_outcomes: dict[str, str] = {}
_started = time.time()


def pytest_runtest_logreport(report) -> None:
    _seconds[report.nodeid] += report.duration
    if report.failed:
        _outcomes[report.nodeid] = "failed"
    elif report.skipped:
        _outcomes.setdefault(report.nodeid, "skipped")
    elif report.when == "call":
        _outcomes.setdefault(report.nodeid, "passed")


def pytest_sessionfinish(session, exitstatus) -> None:
    target = os.environ.get("NEUROPREDICT_TEST_REPORT")
    if not target or hasattr(session.config, "workerinput"):  # with pytest-xdist: the controller writes it
        return
    from neuropredict import tracking
    from neuropredict.files import write_json

    ended = time.time()
    run_started = float(os.environ.get("NEUROPREDICT_RUN_STARTED") or _started)
    counts = defaultdict(int)
    for outcome in _outcomes.values():
        counts[outcome] += 1
    slowest = sorted(_seconds.items(), key=lambda kv: -kv[1])[:15]
    write_json(Path(target), {
        "measured": tracking.measured(os.environ.get("NEUROPREDICT_TEST_COMMAND", "make test")),
        "tests": len(_outcomes), "passed": counts["passed"], "failed": counts["failed"], "skipped": counts["skipped"],
        "pytest_seconds": round(ended - _started, 1), "run_seconds": round(ended - run_started, 1),
        "processes": int(getattr(session.config.option, "numprocesses", None) or 1),
        "slowest": [{"test": nodeid, "seconds": round(seconds, 1)} for nodeid, seconds in slowest],
        "files": {path: round(seconds, 1) for path, seconds in sorted(_per_file().items(), key=lambda kv: -kv[1])},
    })


def _per_file() -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for nodeid, seconds in _seconds.items():
        out[nodeid.split("::", 1)[0]] += seconds
    return out


def pytest_collection_modifyitems(session, config, items) -> None:
    """The longest test files first (by the committed report's `files`), so that with several
    test processes the last one to start is a short one and they finish together."""
    report = Path(config.rootpath) / "reports" / "tests.json"
    try:
        cost = json.loads(report.read_text()).get("files", {})
    except (OSError, ValueError):
        return
    order = {item.nodeid: i for i, item in enumerate(items)}
    items.sort(key=lambda item: (-cost.get(item.nodeid.split("::", 1)[0], 0.0), order[item.nodeid]))
