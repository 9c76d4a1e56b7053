"""The serving state topic, a changelog as Kafka Streams keeps one: each symbol's recent valid
ticks (with the input offsets they came from) and its open forecast (with the online quantiles
its intervals were made with), keyed by symbol, in the partition of the input it came from. A
record per symbol a batch touched is written with the batch (in its transaction under
exactly-once); the topic is compacted, so the newest record per symbol stays. A worker restores
a partition from it: the ticks before the group's committed offset, replayed through the same
rules as live ones. So a restart needs no warm-up whatever the
input topic's retention. A restore reads the partition back from its end only until it holds
the newest record of every symbol the newest record lists (its `roster`: the partition's symbols
then), so it reads a few records per symbol however long the history, compacted or not yet.

The input is read back instead only where the state cannot answer: a partition it holds nothing
for (the first start on a stream), or a symbol whose stored ticks are fewer than a window needs.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import orjson
from kafka import TopicPartition

from neuropredict import messages
from neuropredict.kafka_io import TopicReader
from neuropredict.messages import Tick
from neuropredict.stream.state import OpenForecast, SymbolState

log = logging.getLogger(__name__)

MIN_TICKS = 64  # ticks kept per symbol, at least: room for the rules to settle beyond a window


class Changelog:
    """Each owned symbol's last `keep` valid ticks, and the state topic's records of them."""

    def __init__(self, topic: str, windows: Callable[[], list[int]] = lambda: [], level_shift_ticks: int = 0):
        self.topic, self.keep = topic, MIN_TICKS
        self.windows, self.level_shift_ticks = windows, level_shift_ticks  # the served models' windows, now
        self.tails: dict[str, deque] = {}      # symbol -> (offset, timestamp, price)
        self.partition: dict[str, int] = {}
        self._dirty: set[str] = set()         # restored from the input: written with the next batch
        self._read: dict[tuple, dict] = {}    # (partition, committed) -> stored records, for one restore
        self._restore_reader: TopicReader | None = None  # the one reader of a restore under way

    def fit(self) -> None:
        """Keep enough ticks for the longest served window (and the rules' level shifts), twice over."""
        keep = max(MIN_TICKS, 2 * (max(self.windows(), default=0) + self.level_shift_ticks))
        if keep > self.keep:
            self.keep = keep
            self.tails = {s: deque(t, maxlen=keep) for s, t in self.tails.items()}

    def add(self, batch) -> None:
        """A batch's valid ticks (a swap may have brought a longer window: fit first)."""
        self.fit()
        for symbol, idx in batch.by_symbol.items():
            records = [batch.records[i] for i in idx]
            self.extend(symbol, records[0].partition, (r.offset for r in records), (batch.ticks[i] for i in idx))

    def extend(self, symbol: str, partition: int, offsets: Iterable[int], ticks: Iterable[Tick]) -> None:
        tail = self.tails.get(symbol)
        if tail is None:
            tail = self.tails[symbol] = deque(maxlen=self.keep)
        tail.extend((o, t.timestamp, t.price) for o, t in zip(offsets, ticks))
        self.partition[symbol] = partition

    def records(self, symbols: Iterable[str], states: dict[str, SymbolState]) -> list[tuple[int, bytes, bytes]]:
        """(partition, key, value) for the symbols a batch touched, and those restored from the input."""
        touched, self._dirty = set(symbols) | self._dirty, set()
        rosters: dict[int, list[str]] = {}
        for s, p in self.partition.items():
            rosters.setdefault(p, []).append(s)
        return [(self.partition[s], s.encode(), _encode(s, self.partition[s], self.tails[s], states.get(s),
                                                        sorted(rosters[self.partition[s]])))
                for s in sorted(touched) if s in self.tails]

    def drop(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        for symbol in [s for s, p in self.partition.items() if p in gone]:
            del self.tails[symbol], self.partition[symbol]
            self._dirty.discard(symbol)

    @contextlib.contextmanager
    def restoring(self, reader: TopicReader) -> Iterator[None]:
        """One restore of the assigned partitions: the state topic is read again, each partition once,
        by one new reader (a new one per partition cost ~0.15 s each to connect and learn the end)."""
        self._read = {}
        self.fit()
        with reader.fresh() as self._restore_reader:
            try:
                yield
            finally:
                self._restore_reader = None

    def history(self, reader: TopicReader, tp, committed: int, enough: int,
                read_input) -> tuple[dict[str, list[Tick]], dict[str, OpenForecast]]:
        """Each symbol's ticks before `committed`, and the open forecasts stored with them: from
        the state topic, else (`read_input()`) from the input, whose ticks then go to the state."""
        stored = self._stored(reader, tp, committed)
        history, opens, short = {}, {}, False
        for symbol, record in stored.items():
            kept = [row for row in record["ticks"] if row[0] < committed]
            history[symbol] = kept
            # an open forecast stands only if the record is this very state (at-least-once may
            # have stored a batch that was then not committed: its ticks are cut off above)
            if len(kept) == len(record["ticks"]) and record.get("open"):
                opens[symbol] = _open(record["open"])
            short |= len(record["ticks"]) >= record["keep"] and len(kept) < enough
        if not stored or short:
            log.info("partition %d: the state topic %s; reading the input back", tp.partition,
                     "holds nothing yet" if not stored else "holds too few ticks for a window")
            for symbol, ticks in read_input().items():
                if len(history.get(symbol, ())) < min(enough, len(ticks)):
                    history[symbol] = [(-1, t.timestamp, t.price) for t in ticks]  # offsets unknown, all before
                    opens.pop(symbol, None)
                    self._dirty.add(symbol)
        for symbol, rows in history.items():
            self.tails[symbol] = deque(map(tuple, rows), maxlen=self.keep)
            self.partition[symbol] = tp.partition
        ticks = {s: [Tick(ts, s, p, messages.clock_seconds(ts)) for _, ts, p in rows] for s, rows in history.items()}
        return ticks, opens

    def _stored(self, reader: TopicReader, tp, committed: int) -> dict[str, dict]:
        """The newest committed record of each symbol in the state partition of input partition
        tp: read back from the end, further each time, until every symbol of the roster is found."""
        key = (tp.partition, committed)
        if key in self._read:
            return self._read[key]
        # a new reader (a reused one may know a stale end of a partition it read, kafka_io.TopicReader.read):
        # the restore's, else (a hot swap's rebuild) one for this read
        restore_reader = self._restore_reader
        with contextlib.nullcontext(restore_reader) if restore_reader else reader.fresh() as fresh:
            self._read[key] = _newest_records(fresh, TopicPartition(self.topic, tp.partition))
        return self._read[key]


def _newest_records(reader: TopicReader, state_tp) -> dict[str, dict]:
    end = reader.high_watermarks([state_tp]).get(state_tp, 0)
    span = 4 * MIN_TICKS
    while True:
        lo, newest, roster = max(0, end - span), {}, set()
        for rec in reader.read_range(state_tp, lo, end):
            try:
                value = orjson.loads(rec.value)
            except orjson.JSONDecodeError:
                continue  # not ours: the topic is this product's alone
            newest[value["symbol"]], roster = value, set(value.get("roster", ()))  # the last read is the newest
        if lo == 0 or roster <= set(newest):
            return newest
        span *= 4


def _encode(symbol: str, partition: int, tail: deque, state: SymbolState | None, roster: list[str]) -> bytes:
    opened = state.open if state is not None else None
    has_open = opened is not None and not math.isnan(opened.forecast)
    return orjson.dumps({
        "symbol": symbol, "partition": partition, "roster": roster, "keep": tail.maxlen, "ticks": list(tail),
        "open": {"forecast": opened.forecast, "version": opened.version, "price": opened.price,
                 "bounds": np.asarray(opened.bounds, dtype=float).tolist(), "keys": [list(k) for k in opened.keys],
                 "quantiles": opened.quantiles}
        if has_open else None,
    })


def _open(stored: dict) -> OpenForecast:
    return OpenForecast(stored["forecast"], stored["version"], stored["price"], np.asarray(stored["bounds"], dtype=float),
                        tuple((m, float(p)) for m, p in stored["keys"]), quantiles=stored.get("quantiles", {}))
