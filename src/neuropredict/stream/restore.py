"""Restore: rebuild the symbols of newly owned partitions from Kafka itself.

On assignment (start, restart, rebalance), after a rewind, and on a hot swap to a model with
another window, each symbol's recent ticks before the group's committed offset are replayed
through the same rules as live ticks, so a restart needs no warm-up and no external store. The
ticks come from the state topic (stream/changelog.py), else from the input topic read back.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable

from neuropredict import kafka_io, messages
from neuropredict.kafka_io import TopicReader
from neuropredict.messages import Tick
from neuropredict.stream.changelog import Changelog
from neuropredict.stream.state import SymbolBook

log = logging.getLogger(__name__)


def rebuild(book: SymbolBook, reader: TopicReader, consumer, partitions: Iterable, served,
            lookback_max: int, changelog: Changelog | None = None, keep_open: bool = False, reopen: bool = True,
            stored_open: bool = False) -> None:
    """Rebuild every symbol of these partitions. keep_open (a hot swap): each symbol keeps the
    forecast the previous model published, so it is scored under that model's version;
    otherwise, with stored_open, the open forecast the state topic kept (the one published
    before the stop, whatever model made it), else with reopen the forecast of the last tick is
    made again; without either (a model's first load mid-stream), none is open."""
    partitions = list(partitions)
    gone = {tp.partition for tp in partitions}
    kept = {s: st.open for s, st in book.states.items() if st.partition in gone} if keep_open else {}
    book.drop(gone)
    for tp in partitions:
        committed = consumer.committed(tp, timeout_ms=kafka_io.CONSUMER_REQUEST_TIMEOUT_MS)
        if not committed:
            continue
        enough = book.window + book.rules.level_shift_ticks
        def from_input(tp=tp, committed=committed, enough=enough):  # noqa: E306
            return read_back(reader, tp, committed, enough, lookback_max)
        history, opens = changelog.history(reader, tp, committed, enough, from_input) if changelog else \
            (from_input(), {})
        for symbol, ticks in history.items():
            if not ticks:
                continue
            book.advance(symbol, tp.partition, settled(ticks, book.rules.max_abs_log_return))
            prices = book.full_window(symbol)
            if symbol in kept:
                book.states[symbol].keep(kept[symbol])
            elif stored_open and symbol in opens and prices is not None and opens[symbol].price == prices[-1]:
                book.states[symbol].keep(opens[symbol])
            elif reopen and prices is not None:
                book.states[symbol].reopen(*served.forecaster.forecast_row(prices, symbol), served.version)
        log.info("partition %d: rebuilt %d symbols from %d messages before offset %d", tp.partition,
                 len(history), sum(len(t) for t in history.values()), committed)


def settled(ticks: list[Tick], max_abs_log_return: float) -> list[Tick]:
    """History from its first tick that agrees with the next: the rules judge each tick against
    the one before, and the first tick read back has none (it may be a spike live rejected)."""
    start = 0
    while start + 1 < len(ticks) and abs(math.log(ticks[start + 1].price / ticks[start].price)) > max_abs_log_return:
        start += 1
    return ticks[start:]


def read_back(reader: TopicReader, tp, committed: int, enough: int, lookback_max: int) -> dict[str, list[Tick]]:
    """The valid, correctly keyed ticks of each symbol just before `committed`, reading further
    back until every symbol seen has `enough` of them (a window, and room for the rules to
    settle), or the partition start / the bound is reached."""
    span = min(max(enough * 16, 256), lookback_max)
    while True:
        lo = max(0, committed - span)
        ticks: dict[str, list[Tick]] = defaultdict(list)
        for rec in reader.read_range(tp, lo, committed):
            tick = messages.parse_tick(rec.value)
            if not isinstance(tick, str) and rec.key == tick.symbol.encode():  # re-keyed ones return
                ticks[tick.symbol].append(tick)
        if lo == 0 or span >= lookback_max or all(len(t) >= enough for t in ticks.values()):
            return ticks
        span = min(span * 4, lookback_max)
