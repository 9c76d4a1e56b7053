"""The training pipeline run from the product: `dvc repro`, and `neuropredict retrain`, the daily
loop's first half. retrain takes the ticks the stream carried into data/stream (a dependency of
the download stage) and runs `dvc repro`: the splits move to the newest sessions, and `register`
gates the new version against production on the same test rows. It becomes the `challenger`
(scored live beside production; `promote` reads that), or production when it earns it."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from neuropredict import kafka_io, messages, sources, stream_report
from neuropredict.console import tool, tools_env
from neuropredict.errors import NeuropredictError
from neuropredict.files import read_json
from neuropredict.settings.contracts import Topics
from neuropredict.settings.paths import Paths
from neuropredict.settings.schema import Params
from neuropredict.stream.rules import TickRules

log = logging.getLogger(__name__)


def repro(project: Paths, *args: str) -> None:
    """`dvc repro` in the project, its output passed through; a failure is one line after it."""
    command = [tool("dvc"), "repro", *args]
    if subprocess.run(command, cwd=project.root, env=tools_env()).returncode != 0:
        shown = " ".join(["dvc", "repro", *args])
        raise NeuropredictError(f"`{shown}` failed (its messages are above); fix that and run it again")


@dataclass(frozen=True)
class Collected:
    """What one pass over the input topic found."""

    records: int
    malformed: int      # not a tick, or keyed by another symbol than its own: the workers dead-letter them
    other_symbols: int  # ticks of symbols this pipeline does not train on
    rejected: int       # broken serving rules: repeated or out-of-order times, jumps (dead letters too)
    kept: int
    new: int            # not yet in data/stream

    def line(self, topic: str) -> str:
        return (f"stream: {self.records} records in {topic}: {self.kept} ticks kept ({self.new} new in data/stream); "
                f"left out {self.malformed} malformed, {self.rejected} against the serving rules, "
                f"{self.other_symbols} of other symbols")


def collect(params: Params, project: Paths, topics: Topics, bootstrap: str | None = None) -> Collected:
    """The input topic's ticks as the workers took them: committed records only (read_committed),
    parsed, each symbol's ticks through the serving rules in offset order (a repeated tick is
    not later than the last one, so at-least-once duplicates fall out), merged into
    data/stream/<interval>/<SYMBOL>.csv."""
    with kafka_io.TopicReader(bootstrap) as reader:
        records = reader.read_all([topics.prices])
    rows, malformed = [], 0
    for r in records:
        tick = messages.parse_tick(r.value)
        if isinstance(tick, str) or r.key != tick.symbol.encode():  # what the worker dead-letters
            malformed += 1
        else:
            rows.append((r.partition, r.offset, tick.symbol, tick.timestamp, tick.price))
    ticks = pd.DataFrame(rows, columns=stream_report.TICK_COLUMNS)
    ours = ticks[ticks["symbol"].isin(params.data.symbols)]
    kept = stream_report.screened(ours, params.data.intraday, TickRules.from_params(params.validate, params.serving))
    new = sum(_merge(sources.stream_file(project.stream_dir, params.data.interval, str(symbol)), group)
              for symbol, group in kept.groupby("symbol"))
    return Collected(len(records), malformed, len(ticks) - len(ours), len(ours) - len(kept), len(kept), new)


def _merge(path: Path, ticks: pd.DataFrame) -> int:
    """Add ticks to a symbol's stream file (a time already there keeps its first price); return
    how many were new."""
    seconds = np.array([messages.clock_seconds(t) for t in ticks["timestamp"]], dtype=np.float64)
    stamps = pd.to_datetime(seconds, unit="s").strftime("%Y-%m-%d %H:%M:%S")  # exchange-local, naive
    fresh = pd.DataFrame({"timestamp": stamps, "price": ticks["price"].to_numpy(float)})
    old = pd.read_csv(path) if path.is_file() else fresh.iloc[:0]
    both = pd.concat([old, fresh]).drop_duplicates("timestamp", keep="first").sort_values("timestamp")
    path.parent.mkdir(parents=True, exist_ok=True)
    both.to_csv(path, index=False)
    return len(both) - len(old)


def retrain(params: Params, project: Paths, topics: Topics, bootstrap: str | None = None,
            collect_only: bool = False) -> dict:
    """collect, then `dvc repro` (the download stage again first when data.end is latest: the
    source may have newer bars). Returns register's decision (or {} when nothing was registered)."""
    found = collect(params, project, topics, bootstrap)
    print(found.line(topics.prices))
    if collect_only:
        return {}
    before = _test_period(project), _registered(project)
    if params.data.latest:
        repro(project, "--force", "--single-item", "download")
    repro(project)
    after = _test_period(project), _registered(project)
    print(f"retrain: test period {before[0] or 'none'} -> {after[0]}")
    if after[1] == before[1]:
        print("retrain: nothing new to train on; the registered model is unchanged")
        return {}
    decision = read_json(project.metrics_dir / "register.json")
    print(f"retrain: version {decision['version']} -> {decision['verdict']}: {decision['reason']}")
    return decision


def _test_period(project: Paths) -> str | None:
    path = project.metrics_dir / "featurize.json"
    periods = read_json(path).get("periods") if path.is_file() else None
    return f"{periods['test_start']}..{periods['end']}" if periods else None


def _registered(project: Paths) -> int | None:
    """When register last wrote its decision (it rewrites it each time it runs)."""
    path = project.metrics_dir / "register.json"
    return path.stat().st_mtime_ns if path.is_file() else None
