"""Everything a worker counts: inputs by what they became, live errors beside persistence (overall,
per symbol, per model version), interval coverage and score, latency, and where the time goes."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from neuropredict import intervals
from neuropredict.evaluation import skill
from neuropredict.settings.contracts import PRODUCTION_ALIAS
from neuropredict.stream.rules import reason_code

if TYPE_CHECKING:
    from neuropredict.stream.batch import Batch


@dataclass
class ErrorSums:
    """Running sums for MSE of the model and of persistence on the same ticks, and for each
    interval (method, level): rows scored, rows inside, and the interval score (% of the price)."""

    n: int = 0
    model_sq: float = 0.0
    naive_sq: float = 0.0
    diff: float = 0.0     # sums of the loss differential d = model_err^2 - naive_err^2 ...
    diff_sq: float = 0.0  # ... and of d^2: the Diebold-Mariano t, as evaluation.dm_test
    intervals: dict[tuple[str, float], list[float]] = field(default_factory=dict)

    def add(self, model_err: np.ndarray, naive_err: np.ndarray, spread: dict | None = None) -> None:
        self.n += len(model_err)
        self.model_sq += float(np.dot(model_err, model_err))
        self.naive_sq += float(np.dot(naive_err, naive_err))
        d = model_err * model_err - naive_err * naive_err
        self.diff += float(d.sum())
        self.diff_sq += float(np.dot(d, d))
        self._add_intervals(spread or {})

    def merge(self, other: ErrorSums) -> None:
        self.n += other.n
        self.model_sq += other.model_sq
        self.naive_sq += other.naive_sq
        self.diff += other.diff
        self.diff_sq += other.diff_sq
        self._add_intervals(other.intervals)

    def _add_intervals(self, spread: dict) -> None:
        for key, sums in spread.items():
            total = self.intervals.setdefault(key, [0.0, 0.0, 0.0])
            for i, value in enumerate(sums):
                total[i] += value

    def figures(self) -> dict[str, float]:
        if self.n == 0:
            return {}
        mse, naive = self.model_sq / self.n, self.naive_sq / self.n
        out = {"mse": mse, "naive_mse": naive, "skill": skill(mse, naive), "dm_t": self.dm_t(), "scored": float(self.n)}
        for (method, level), (n, inside, score) in self.intervals.items():
            if n:
                out[intervals.metric_name(method, "coverage", level)] = 100 * inside / n
                out[intervals.metric_name(method, "interval_score", level)] = score / n
        return out

    def dm_t(self) -> float:
        """t of the mean loss differential against persistence (positive: worse), 0 when undefined."""
        if self.n < 2:
            return 0.0
        mean = self.diff / self.n
        var = (self.diff_sq - self.n * mean * mean) / (self.n - 1)
        return float(mean / math.sqrt(var / self.n)) if var > 0 else 0.0


@dataclass
class RollingErrors:
    """ErrorSums of the newest `ticks` scored ticks per (alias, version), kept in whole batches:
    what live MSE, skill and coverage are now, where the cumulative sums say what they were on average."""

    ticks: int
    batches: dict[tuple[str, str], deque] = field(default_factory=dict)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, key: tuple[str, str], sums: ErrorSums) -> None:
        held = self.batches.setdefault(key, deque())
        held.append(sums)
        self.counts[key] = self.counts.get(key, 0) + sums.n
        while len(held) > 1 and self.counts[key] - held[0].n >= self.ticks:
            self.counts[key] -= held.popleft().n

    def totals(self) -> dict[tuple[str, str], ErrorSums]:
        out = {}
        for key, held in list(self.batches.items()):
            total = out[key] = ErrorSums()
            for sums in list(held):
                total.merge(sums)
        return out


class Histogram:
    """Counts of observations per bucket (Prometheus' upper bounds, inclusive), their sum and count:
    a batch of values is added in one vectorised call."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = np.asarray(bounds, np.float64)
        self.counts = np.zeros(len(bounds) + 1, np.int64)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, values: np.ndarray) -> None:
        if len(values):
            self.counts += np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self.counts))
            self.sum += float(values.sum())

    def cumulative(self) -> tuple[list[tuple[str, int]], float]:
        """[(le, observations <= le)...] ending with +Inf, and the sum."""
        running = np.cumsum(self.counts)
        return [*((f"{b:g}", int(c)) for b, c in zip(self.bounds, running)), ("+Inf", int(running[-1]))], self.sum


LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LIVE_WINDOW_TICKS = 500


@dataclass
class Timing:
    """Where the time goes, under a prefix (a shadow's steps beside production's)."""

    stats: LiveStats
    prefix: str

    def add_seconds(self, step: str, seconds: float) -> None:
        self.stats.add_seconds(self.prefix + step, seconds)

    def timed(self, step: str):
        return self.stats.timed(self.prefix + step)


@dataclass
class LiveStats:
    """Everything a worker counts. Every input is exactly one of: predicted, dead-lettered,
    warm-up, or re-keyed (sent again under its symbol's key, and counted again when it returns)."""

    consumed: int = 0
    predicted: int = 0
    dead_lettered: int = 0
    warmup: int = 0
    rekeyed: int = 0
    batches: int = 0
    swaps: int = 0
    rewinds: int = 0  # batches sent again after a failure (at-least-once redelivery)
    new_levels: int = 0  # ticks accepted as a lasting new price level (the window restarted)
    busy_s: float = 0.0  # time spent processing batches (throughput while there was work)
    cadence_mismatches: int = 0  # ticks closer together than the model's interval
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)  # by reason_code
    overall: ErrorSums = field(default_factory=ErrorSums)
    by_symbol: dict[str, ErrorSums] = field(default_factory=dict)
    by_version: dict[str, ErrorSums] = field(default_factory=dict)
    by_alias: dict[tuple[str, str], ErrorSums] = field(default_factory=dict)  # (alias, version): shadows too
    shadow_failures: int = 0  # shadow versions left out after failing to score
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=50_000))
    polled: int = 0  # records polled, committed or not (input arrives: a batch that keeps failing polls too)
    lag: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> records behind the end
    last_poll_at: float = 0.0  # wall-clock seconds of the last poll (a stalled loop stops moving it)
    latency_s: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_S))
    batch_s: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS_S))
    recent: RollingErrors = field(default_factory=lambda: RollingErrors(LIVE_WINDOW_TICKS))
    started: float = field(default_factory=time.monotonic)
    seconds: dict[str, float] = field(default_factory=dict)  # where the time goes, per step of the loop
    first_data_at: float = 0.0  # perf_counter when the first batch arrived ...
    last_commit_at: float = 0.0  # ... and when the latest one was committed (end-to-end throughput)

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Around the processing of a batch (committed or rewound): throughput while there was work, and
        the batches' durations."""
        began = time.perf_counter()
        self.first_data_at = self.first_data_at or began
        try:
            yield
        finally:
            took = time.perf_counter() - began
            self.busy_s += took
            self.batch_s.observe(np.array([took]))

    def note_poll(self, polled: dict, consumer, seconds: float) -> None:
        """A poll: its time, the records it brought, and each owned partition's lag as of the consumer's
        last fetch: its high watermark less its position (the Java consumer's records-lag; no request)."""
        self.add_seconds("poll" if polled else "idle", seconds)
        self.polled += sum(map(len, polled.values()))
        self.last_poll_at = time.time()
        lag = {}
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            if end is not None:
                lag[(tp.topic, tp.partition)] = max(end - consumer.position(tp), 0)
        self.lag = lag

    def add_seconds(self, step: str, seconds: float) -> None:
        self.seconds[step] = self.seconds.get(step, 0.0) + seconds

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add_seconds(step, time.perf_counter() - began)

    def prefixed(self, prefix: str) -> Timing:
        return Timing(self, prefix)

    def add_batch(self, batch: Batch, dead_letter_reasons: list[str], scores: list[tuple],
                  shadow_scores: list[tuple[str, tuple]] = ()) -> None:
        """Count a committed batch, and apply its score contributions (production's, shadows')."""
        for contribution in scores:
            self.score(*contribution)
        in_batch: dict[tuple[str, str], ErrorSums] = {}
        for alias, (_symbol, version, *errors) in shadow_scores:
            if len(errors[0]):
                in_batch.setdefault((alias, version), ErrorSums()).add(*errors)
        for _symbol, version, *errors in scores:
            if len(errors[0]):
                in_batch.setdefault((PRODUCTION_ALIAS, version), ErrorSums()).add(*errors)
        for key, sums in in_batch.items():
            self.by_alias.setdefault(key, ErrorSums()).merge(sums)
            self.recent.add(key, sums)
        for reason in dead_letter_reasons:
            code = reason_code(reason)
            self.dead_letter_reasons[code] = self.dead_letter_reasons.get(code, 0) + 1
        steps = batch.steps.values()
        predicted = sum(len(step.owners) for step in steps)
        self.consumed += batch.consumed
        self.predicted += predicted
        self.dead_lettered += len(dead_letter_reasons)
        self.warmup += sum(len(step.accepted) for step in steps) - predicted
        self.rekeyed += len(batch.miskeyed)
        self.new_levels += sum(step.new_levels for step in steps)
        self.cadence_mismatches += sum(step.same_day for step in steps)
        self.batches += 1
        self.last_commit_at = time.perf_counter()
        created_ms = np.fromiter((r.timestamp for r in batch.records), np.float64, len(batch.records))
        latencies_ms = time.time() * 1000 - created_ms
        self.latencies_ms.extend(latencies_ms)
        self.latency_s.observe(latencies_ms / 1000)

    def score(self, symbol: str, version: str, model_err: np.ndarray, naive_err: np.ndarray,
              spread: dict | None = None) -> None:
        if len(model_err) == 0:
            return
        self.overall.add(model_err, naive_err, spread)
        self.by_symbol.setdefault(symbol, ErrorSums()).add(model_err, naive_err, spread)
        self.by_version.setdefault(version, ErrorSums()).add(model_err, naive_err, spread)

    def snapshot(self) -> dict[str, float]:
        """Flat metrics for MLflow: live_mse beside live_naive_mse, counts, throughput, latency."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        out = {"consumed": self.consumed, "predicted": self.predicted, "dlq_count": self.dead_lettered,
               "warmup_count": self.warmup, "rekeyed_count": self.rekeyed, "model_swaps": self.swaps,
               "rewind_count": self.rewinds, "new_level_count": self.new_levels,
               "cadence_mismatch_count": self.cadence_mismatches,
               **{f"dlq_{code}_count": n for code, n in self.dead_letter_reasons.items()},
               "throughput_ticks_per_s": self.consumed / elapsed,
               "busy_throughput_ticks_per_s": self.consumed / self.busy_s if self.busy_s else 0.0}
        for key, value in self.overall.figures().items():
            out[f"live_{key}"] = value
        for symbol, sums in self.by_symbol.items():
            for key, value in sums.figures().items():
                if key != "scored":
                    out[f"live_{key}_{symbol}"] = value
        for (alias, version), sums in self.by_alias.items():  # each version as what it was served
            out.update({f"{alias}_v{version}_{key}": value for key, value in sums.figures().items()})
        out["shadow_failures"] = self.shadow_failures
        out.update({f"seconds_{step}": value for step, value in self.seconds.items()})  # where the time goes
        out["batches"] = self.batches
        if self.latencies_ms:
            lat = np.fromiter(self.latencies_ms, np.float64)
            out.update({f"latency_ms_p{q}": float(np.percentile(lat, q)) for q in (50, 95, 99)})
        return {k: float(v) for k, v in out.items()}


def summary(stats: LiveStats) -> str:
    """One line: what the inputs became, live MSE beside persistence, interval coverage."""
    figures = stats.overall.figures()
    live = (f", live MSE {figures['mse']:.4f} vs persistence {figures['naive_mse']:.4f} "
            f"(skill {100 * figures['skill']:+.2f} %) on {figures['scored']:.0f} ticks") if figures else ""
    coverage = [f"{intervals.label(level)} %: {figures[name]:.1f} %" for m, level in stats.overall.intervals
                if m == "model" and (name := intervals.metric_name(m, "coverage", level)) in figures]
    covered = f"; interval coverage {', '.join(coverage)}" if coverage else ""
    rekeyed = f" + {stats.rekeyed} re-keyed" if stats.rekeyed else ""
    shadows = "".join(f"; in shadow, {alias} v{version}: MSE {f['mse']:.4f} (skill {100 * f['skill']:+.2f} %, DM t "
                      f"{f['dm_t']:+.2f} against persistence) on {f['scored']:.0f} ticks"
                      for (alias, version), sums in stats.by_alias.items()
                      if alias != PRODUCTION_ALIAS and (f := sums.figures()))
    return (f"{stats.consumed} consumed = {stats.predicted} predicted + {stats.dead_lettered} dead-lettered + "
            f"{stats.warmup} warm-up{rekeyed}{live}{covered}{shadows}")
