"""Shadow scoring: the versions behind `challenger` (and any alias in serving.shadow_aliases)
forecast the same ticks as production, in the same micro-batch and through the same forecast
path, after production's forecasts are handed to delivery. Their forecasts go to their own topic
(inside the batch's transaction under exactly-once, so a comparison can be recomputed from the
topics) and are scored live per version.

Production never waits for a shadow nor fails with it: a shadow's model arrives through its alias
watch in the background; one that fails to score is reported once and left out until its alias
moves. A shadow whose alias points at production's version is not scored twice.
"""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import Executor

from neuropredict.stream.batch import Batch
from neuropredict.stream.delivery import Delivery
from neuropredict.stream.model_slot import ModelSlot
from neuropredict.stream.predict import forecast_and_publish
from neuropredict.stream.rules import TickRules
from neuropredict.stream.scoring import score_forecasts
from neuropredict.stream.stats import LiveStats

log = logging.getLogger(__name__)


class Shadows:
    """The shadow slots of one worker: each an alias with its own model, windows and open forecasts."""

    def __init__(self, model_name: str, aliases: tuple[str, ...], rules: TickRules, restore_lookback_max: int,
                 production_alias: str):
        self.model_name, self.rules, self.restore_lookback_max = model_name, rules, restore_lookback_max
        self.slots = [ModelSlot(model_name, alias, rules, restore_lookback_max)
                      for alias in aliases if alias != production_alias]
        self._broken: dict[str, str] = {}  # alias -> the version that failed to score

    def pin(self, alias: str, served) -> None:
        """A shadow serving one fixed model, no alias watch (the benchmark's)."""
        slot = ModelSlot(self.model_name, alias, self.rules, self.restore_lookback_max, pinned_version=served.version)
        slot.adopt(served)
        self.slots.append(slot)

    def watch(self, poll_interval_s: float) -> None:
        for slot in self.slots:
            slot.watch(poll_interval_s)

    def stop(self) -> None:
        for slot in self.slots:
            slot.stop()

    def served(self) -> dict[str, str]:
        """alias -> version of each shadow with a model."""
        return {slot.alias: slot.version for slot in self.slots if slot.loaded}

    def maybe_swap(self, reader, consumer) -> None:
        """Between two batches: a shadow alias that moved (or got its first model) swaps."""
        for slot in self.slots:
            if slot.alias in self._broken and slot.watcher and slot.watcher.ready():
                del self._broken[slot.alias]
                slot.book = None  # its state stopped mid-batch: rebuilt from the topic with the new model
            slot.maybe_swap(reader, consumer)

    def restore(self, reader, consumer, partitions) -> None:
        for slot in self.slots:
            slot.restore(reader, consumer, partitions)

    def forecast_and_score(self, batch: Batch, delivery: Delivery, pool: Executor, production_version: str,
                           worker_id: str, stats: LiveStats) -> list[tuple[str, tuple]]:
        """Each active shadow's forecasts of the batch, published to the shadow topic; returns
        (alias, score contribution) to apply once the batch is committed."""
        out = []
        for slot in self.slots:
            if not slot.loaded or slot.version == production_version or self._broken.get(slot.alias) == slot.version:
                continue
            try:
                out += [(slot.alias, c) for c in _score(slot, batch, delivery, pool, worker_id, stats)]
            except Exception as exc:  # a shadow never fails production
                self._broken[slot.alias] = slot.version
                stats.shadow_failures += 1
                log.error("shadow %s v%s failed to score (%s: %s): left out until its alias moves; production's "
                          "forecasts are unaffected", slot.alias, slot.version, type(exc).__name__, str(exc)[:200])
        return out


def _score(slot: ModelSlot, batch: Batch, delivery: Delivery, pool: Executor, worker_id: str,
           stats: LiveStats) -> list[tuple]:
    """The shadow's own windows of the batch's ticks (the same rules), its forecasts, their scores."""
    book, forecaster = slot.book, slot.forecaster
    timing = stats.prefixed("shadow_")
    with timing.timed("feature"):
        steps = {symbol: book.advance(symbol, batch.records[idx[0]].partition, [batch.ticks[i] for i in idx])
                 for symbol, idx in batch.by_symbol.items()}
    view = dataclasses.replace(batch, steps=steps)
    forecasts, bounds = forecast_and_publish(forecaster, view, delivery, pool, slot.version, worker_id, timing,
                                             alias=slot.alias)
    with timing.timed("score"):
        return [c for symbol, step in steps.items() for c in score_forecasts(
            symbol, book.states[symbol], step, forecasts[view.accepted(symbol)], bounds[view.accepted(symbol)],
            forecaster.live_keys, slot.version)]
