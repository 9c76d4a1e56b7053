"""Shadow scoring: the versions behind `challenger` (and any alias in serving.shadow_aliases)
forecast the same ticks as production, in the same micro-batch and through the same forecast
path. A shadow's model call starts on the model thread once production's is done (so it runs
while production's forecasts are published), and its forecasts are published after
production's, to their own topic (inside the batch's transaction under exactly-once, so a
comparison can be recomputed from the topics); they are scored live per version.

Production never waits for a shadow nor fails with it: a shadow's model arrives through its alias
watch in the background; one that fails to score is reported once and left out until its alias
moves. A shadow whose alias points at production's version is not scored twice.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from neuropredict.settings.contracts import PRODUCTION_ALIAS
from neuropredict.stream.batch import Batch
from neuropredict.stream.changelog import Changelog
from neuropredict.stream.delivery import Delivery
from neuropredict.stream.model_slot import ModelSlot
from neuropredict.stream.predict import publish, start_forecast
from neuropredict.stream.rules import TickRules
from neuropredict.stream.scoring import score_forecasts
from neuropredict.stream.stats import LiveStats

log = logging.getLogger(__name__)


class Shadows:
    """The shadow slots of one worker: each an alias with its own model, windows and open forecasts."""

    def __init__(self, model_name: str, aliases: tuple[str, ...], rules: TickRules, restore_lookback_max: int,
                 production_alias: str, changelog: Changelog | None = None):
        self.model_name, self.rules, self.restore_lookback_max = model_name, rules, restore_lookback_max
        self.changelog = changelog
        self.slots = [ModelSlot(model_name, alias, rules, restore_lookback_max, changelog=changelog)
                      for alias in aliases if alias != production_alias]
        self._broken: dict[str, str] = {}  # alias -> the version that failed to score

    def pin(self, alias: str, served) -> None:
        """A shadow serving one fixed model, no alias watch (the benchmark's)."""
        slot = ModelSlot(self.model_name, alias, self.rules, self.restore_lookback_max, pinned_version=served.version,
                         changelog=self.changelog)
        slot.adopt(served)
        self.slots.append(slot)

    def watch(self, poll_interval_s: float) -> None:
        for slot in self.slots:
            slot.watch(poll_interval_s)

    def stop(self) -> None:
        for slot in self.slots:
            slot.stop()

    def served(self, production: ModelSlot | None = None) -> dict[str, str]:
        """alias -> version of each shadow with a model (and production's, given its slot)."""
        main = {PRODUCTION_ALIAS: production.version} if production is not None and production.loaded else {}
        return {**main, **{slot.alias: slot.version for slot in self.slots if slot.loaded}}

    def maybe_swap(self, reader, consumer, production_version: str) -> None:
        """Between two batches: a shadow alias that moved (or got its first model) swaps. A shadow
        serving production's own version sits idle without state; once it serves another one
        (its alias moved, or production's did), its state is rebuilt from the topics."""
        for slot in self.slots:
            if slot.alias in self._broken and slot.watcher and slot.watcher.ready():
                del self._broken[slot.alias]
                slot.book = None  # its state stopped mid-batch: rebuilt from the topic with the new model
            slot.maybe_swap(reader, consumer)
            if slot.loaded and slot.version == production_version:
                slot.book = None  # idle: its windows would go stale (a daily loop found them months old)
            elif slot.loaded and slot.book is None and consumer is not None:
                slot.resume(reader, consumer)

    def windows(self) -> list[int]:
        """The windows of the shadows with a model."""
        return [slot.book.window for slot in self.slots if slot.book is not None]

    def restore(self, reader, consumer, partitions) -> None:
        for slot in self.slots:
            slot.restore(reader, consumer, partitions)

    def start(self, batch: Batch, pool: Executor, production_version: str, stats: LiveStats) -> list[ShadowRun]:
        """Each active shadow's windows of the batch's ticks (its own book, the same rules) and its
        model call, queued on the model thread (called once production's model call is done)."""
        runs = []
        for slot in self.slots:
            if not slot.loaded or slot.version == production_version or self._broken.get(slot.alias) == slot.version:
                continue
            timing = stats.prefixed("shadow_")
            try:
                with timing.timed("feature"):
                    steps = {symbol: slot.book.advance(symbol, batch.records[idx[0]].partition,
                                                       [batch.ticks[i] for i in idx])
                             for symbol, idx in batch.by_symbol.items()}
                view = dataclasses.replace(batch, steps=steps)
                with timing.timed("transform"):
                    runs.append(ShadowRun(slot, view, *start_forecast(slot.forecaster, view, pool)))
            except Exception as exc:  # a shadow never fails production
                self._fail(slot, exc, stats)
        return runs

    def finish(self, runs: list[ShadowRun], delivery: Delivery, worker_id: str,
               stats: LiveStats) -> list[tuple[str, tuple]]:
        """Publish each shadow's forecasts to the shadow topic and score them: (alias, score
        contribution) to apply once the batch is committed."""
        out = []
        for run in runs:
            try:
                out += [(run.slot.alias, c) for c in run.publish_and_score(delivery, worker_id, stats)]
            except Exception as exc:
                self._fail(run.slot, exc, stats)
        return out

    def _fail(self, slot: ModelSlot, exc: Exception, stats: LiveStats) -> None:
        self._broken[slot.alias] = slot.version
        stats.shadow_failures += 1
        log.error("shadow %s v%s failed to score (%s: %s): left out until its alias moves; production's forecasts "
                  "are unaffected", slot.alias, slot.version, type(exc).__name__, str(exc)[:200])


@dataclass
class ShadowRun:
    """One shadow's part of a batch: its view of the batch (its own windows) and its model call."""

    slot: ModelSlot
    batch: Batch
    owners: np.ndarray
    chunks: Iterator  # (rows, forecast), the first one already on the model thread

    def publish_and_score(self, delivery: Delivery, worker_id: str, stats: LiveStats) -> list[tuple]:
        slot, batch, timing = self.slot, self.batch, stats.prefixed("shadow_")
        forecasts, bounds = publish(slot.forecaster, batch, self.owners, self.chunks, delivery, slot.version,
                                    worker_id, timing, slot.book.states, alias=slot.alias)
        with timing.timed("score"):
            return [c for symbol, step in batch.steps.items() for c in score_forecasts(
                symbol, slot.book.states[symbol], step, forecasts[batch.accepted(symbol)],
                bounds[batch.accepted(symbol)], slot.forecaster.live_keys, slot.version)]
