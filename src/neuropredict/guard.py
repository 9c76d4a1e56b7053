"""The rollback guard: moves `production` back when its live forecasts go bad.

One guard decides for the whole stream, as its own process (`neuropredict guard`, started by `up
--workers` and by compose): it reads production's forecasts back from the topics (read_committed,
joined with the input ticks as `evaluate` does), so it sees every symbol whichever worker scored
it, never slows a worker, and a guard that restarts resumes its window from the topics (it keeps
no state of its own). Inside the workers, each would see only its own partitions.

Every guard.check_interval_s it judges the newest guard.window_ticks forecasts that the current
production version made since it last became production (a full window first: no verdict on
less). A breach is either
- worse than persistence: Diebold-Mariano t of the squared-error differential above
  guard.max_dm_t (one-sided; stricter than the gate's 2 because the guard tests again and again),
- intervals off nominal: an interval level's coverage with an exact binomial p below
  guard.min_coverage_p.
On a breach it moves `production` back to the version it replaced (kind `guard`, the evidence in
the alias history), and every worker hot-swaps back at its next alias check. It never moves back
to a version it has itself rolled away from (two bad versions need a person, not a ping-pong).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from neuropredict import intervals, promote, promotions, registry, stream_report
from neuropredict.evaluation import dm_test
from neuropredict.settings import environment
from neuropredict.settings.contracts import PRODUCTION_ALIAS, Topics
from neuropredict.settings.schema import Params
from neuropredict.stream.rules import TickRules

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    version: str
    n: int
    breaches: list[str]
    evidence: dict[str, float]


class RollbackGuard:
    def __init__(self, params: Params, topics: Topics, bootstrap: str | None = None):
        self.params, self.topics = params, topics
        self.bootstrap = bootstrap or environment.kafka_bootstrap()
        self.rules = TickRules.from_params(params.validate, params.serving)
        self._said: set[tuple[str, str]] = set()  # (version, what) said once

    def run(self, stop: threading.Event) -> None:
        log.info("guard: judging %s@production on its newest %d live forecasts every %g s (DM t > %g against "
                 "persistence, or coverage p < %g: roll back)", self.params.register.model_name,
                 self.params.guard.window_ticks, self.params.guard.check_interval_s, self.params.guard.max_dm_t,
                 self.params.guard.min_coverage_p)
        while not stop.is_set():
            try:
                self.check()
            except Exception as exc:  # Kafka or MLflow away: judge again at the next check
                log.warning("guard: could not judge production (%s: %s); trying again", type(exc).__name__,
                            str(exc)[:160])
            stop.wait(self.params.guard.check_interval_s)

    def check(self) -> promotions.Move | None:
        """Judge production once; roll it back on a breach. Returns the move, if one was made."""
        name = self.params.register.model_name
        if not _store_exists():  # nothing registered yet; creating the store here would race `dvc repro`'s
            return None
        production = registry.alias_version(name, PRODUCTION_ALIAS)
        if production is None:
            return None
        arrived = promotions.last_move_to(name, PRODUCTION_ALIAS, production)
        verdict = self.judge(production, arrived.at_ms if arrived else None)
        if verdict is None or not verdict.breaches:
            return None
        target = arrived.from_version if arrived else None
        why = "; ".join(verdict.breaches)
        if target is None or target == production:
            return self._once(production, "no-target", f"guard: v{production} breaches ({why}) but no previous "
                              f"production is recorded to return to: a person has to decide")
        if any(m.kind == "guard" and m.from_version == target for m in promotions.history(name, PRODUCTION_ALIAS)):
            return self._once(production, "ping-pong", f"guard: v{production} breaches ({why}), and v{target} was "
                              f"rolled back by the guard before: not moving back to it; a person has to decide")
        log.error("guard: v%s breaches on its newest %d live forecasts (%s): rolling production back to v%s",
                  production, verdict.n, why, target)
        return promote.rollback(self.params, f"guard: {why} on the newest {verdict.n} live forecasts of v{production}",
                                kind="guard", actor=promotions.GUARD_ACTOR, evidence=verdict.evidence)

    def judge(self, version: str, since_ms: int | None) -> Verdict | None:
        """The verdict on the version's newest window of live forecasts (None: not a full window yet)."""
        window = self.params.guard.window_ticks
        rows = stream_report.joined_tail(self.rules, self.params.data.intraday, self.topics, window, self.bootstrap,
                                         since_ms)
        rows = rows[(rows["model_version"] == version) & (rows["alias"] == PRODUCTION_ALIAS)]
        if len(rows) < window:
            return None
        return verdict(version, rows.sort_values("time", kind="stable").tail(window), self.params)

    def _once(self, version: str, what: str, message: str) -> None:
        if (version, what) not in self._said:
            self._said.add((version, what))
            log.error(message)
        return None


def _store_exists() -> bool:
    uri = environment.tracking_uri()
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file()


def verdict(version: str, rows: pd.DataFrame, params: Params) -> Verdict:
    """The guard's rules on a window of scored forecasts (see the module's docstring)."""
    rule = params.guard
    actual, predicted, last = (rows[c].to_numpy(np.float64) for c in ("actual", "predicted", "persistence"))
    d = (predicted - actual) ** 2 - (last - actual) ** 2
    dm_t = dm_test(d)["dm_t"]
    evidence = {"window_ticks": float(len(rows)), "live_mse": float(np.mean((predicted - actual) ** 2)),
                "live_persistence_mse": float(np.mean((last - actual) ** 2)), "live_dm_t": dm_t}
    breaches = []
    if dm_t > rule.max_dm_t:
        breaches.append(f"worse than persistence (DM t {dm_t:+.2f} > {rule.max_dm_t:g})")
    for level in stream_report.interval_levels(rows):
        tag = intervals.label(level)
        lower, upper = (rows[intervals.column("model", side, level)].to_numpy(np.float64)
                        for side in ("lower", "upper"))
        carried = ~np.isnan(lower)
        hits = int(np.count_nonzero((actual >= lower) & (actual <= upper) & carried))
        n = int(carried.sum())
        if not n:
            continue
        p = intervals.binomial_p(hits, n, level)
        evidence.update({f"live_coverage_{tag}": 100 * hits / n, f"live_coverage_p_{tag}": p})
        if p < rule.min_coverage_p:
            breaches.append(f"{tag} % intervals cover {100 * hits / n:.1f} % "
                            f"(binomial p {p:.2g} < {rule.min_coverage_p:g})")
    return Verdict(version, len(rows), breaches, evidence)
