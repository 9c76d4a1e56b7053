"""A pytest plugin: with NEUROPREDICT_TEST_REPORT set to a path, the run writes its timing report
there (tests, outcomes, pytest's seconds, the whole run's seconds since NEUROPREDICT_RUN_STARTED,
the slowest tests), stamped with the commit, so the docs can show it (.ci/run sets both)."""

from __future__ import annotations

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
    if not target:
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
        "slowest": [{"test": nodeid, "seconds": round(seconds, 1)} for nodeid, seconds in slowest],
    })
