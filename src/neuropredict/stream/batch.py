"""One poll's records, and what each became: forecast, warm-up, dead letter or re-keyed."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from neuropredict import messages
from neuropredict.messages import Tick
from neuropredict.stream.state import Advance


@dataclass
class Batch:
    """Valid, correctly keyed ticks grouped by symbol (in partition order), and the rest."""

    ticks: list[Tick] = field(default_factory=list)
    records: list = field(default_factory=list)  # the Kafka record of each tick
    by_symbol: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    malformed: list[tuple[Any, str]] = field(default_factory=list)  # (record, reason)
    miskeyed: list[tuple[Any, Tick]] = field(default_factory=list)  # its key is not its symbol
    steps: dict[str, Advance] = field(default_factory=dict)  # each symbol's ticks through rules and window

    @classmethod
    def parse(cls, polled: dict) -> Batch:
        batch = cls()
        for records in polled.values():
            for rec in records:
                tick = messages.parse_tick(rec.value)
                if isinstance(tick, str):
                    batch.malformed.append((rec, tick))
                elif rec.key != tick.symbol.encode():
                    batch.miskeyed.append((rec, tick))
                else:
                    batch.by_symbol[tick.symbol].append(len(batch.ticks))
                    batch.ticks.append(tick)
                    batch.records.append(rec)
        return batch

    @property
    def consumed(self) -> int:
        return len(self.ticks) + len(self.malformed) + len(self.miskeyed)

    def dead_letters(self) -> list[tuple[Any, str]]:
        """(record, reason): malformed, or breaking the data-quality rules."""
        return self.malformed + [(self.records[self.by_symbol[s][i]], reason)
                                 for s, step in self.steps.items() for i, reason in step.rejected]

    def to_rekey(self) -> list[tuple[Any, str]]:
        """(record, symbol) of the mis-keyed ticks in time order, so they return in order."""
        return [(rec, tick.symbol) for rec, tick in sorted(self.miskeyed, key=lambda pair: pair[1].time_s)]

    def forecast_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The full windows to forecast and the tick (index into `ticks`) each ends at, dealt out
        a round at a time: each symbol's first, then each one's second, ... So any chunk of them
        spans as many symbols as it can, each in order: online.py moves every symbol's trackers a
        step at once, and the steps a chunk takes are its longest run of one symbol."""
        parts = [np.asarray(self.by_symbol[s])[step.owners] for s, step in self.steps.items()]
        if not parts:
            return np.empty(0, dtype=np.int64), np.empty((0, 0))
        owners = np.concatenate(parts).astype(np.int64)
        rounds = np.concatenate([np.arange(len(part)) for part in parts])  # the k-th window of its symbol
        order = np.lexsort((owners, rounds))
        return owners[order], np.concatenate([step.windows for step in self.steps.values()])[order]

    def accepted(self, symbol: str) -> np.ndarray:
        """Indices (into `ticks`) of the symbol's accepted ticks."""
        return np.asarray(self.by_symbol[symbol])[self.steps[symbol].accepted]
