"""The state topic's records (stream/changelog.py) without a broker: what a restore takes from them."""

from types import SimpleNamespace

import numpy as np

from neuropredict.messages import Tick
from neuropredict.stream.changelog import MIN_TICKS, Changelog
from neuropredict.stream.state import OpenForecast, SymbolState


class Reader:
    """A TopicReader stand-in holding the records a worker wrote."""

    def __init__(self, records):
        self.records = records

    def fresh(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def high_watermarks(self, partitions):
        return {tp: len([r for r in self.records if r[0] == tp.partition]) for tp in partitions}

    def read_range(self, tp, lo, hi=None):
        mine = [SimpleNamespace(value=value) for p, _, value in self.records if p == tp.partition]
        return mine[lo:hi]


def _ticks(n, start=0):
    return [Tick(f"2024-01-{1 + (start + i) // 24:02d} {(start + i) % 24:02d}:00:00", "AAPL", 100.0 + start + i)
            for i in range(n)]


def _written(n, open_forecast=True):
    log = Changelog("serving_state")
    log.extend("AAPL", 2, range(100, 100 + n), _ticks(n))
    state = SymbolState(2, open=OpenForecast(123.0, "4", 100.0 + n - 1, np.array([1.0, 2.0]), (("model", 0.8),))
                        if open_forecast else OpenForecast())
    return log.records(["AAPL"], {"AAPL": state})


def test_a_restore_takes_the_ticks_before_the_commit_and_the_open_forecast_stored_with_them():
    records = _written(10)
    assert [(p, key) for p, key, _ in records] == [(2, b"AAPL")]  # keyed by symbol, in the input's partition
    restored = Changelog("serving_state")
    history, opens = restored.history(Reader(records), SimpleNamespace(partition=2), 110, 8, read_input=dict)
    assert [t.price for t in history["AAPL"]] == [100.0 + i for i in range(10)]
    assert opens["AAPL"].forecast == 123.0 and opens["AAPL"].keys == (("model", 0.8),)
    assert restored.partition["AAPL"] == 2 and len(restored.tails["AAPL"]) == 10


def test_ticks_stored_past_the_commit_are_cut_and_their_open_forecast_dropped():
    # at-least-once: the batch's state was sent, the offsets not committed; those ticks come again
    history, opens = Changelog("s").history(Reader(_written(10)), SimpleNamespace(partition=2), 107, 5, dict)
    assert [t.price for t in history["AAPL"]] == [100.0 + i for i in range(7)] and opens == {}


def test_the_input_is_read_back_only_when_the_state_holds_nothing_or_too_little():
    calls = []

    def read_input():
        calls.append(1)
        return {"AAPL": _ticks(20)}

    empty = Changelog("s")
    history, _ = empty.history(Reader([]), SimpleNamespace(partition=2), 50, 10, read_input)
    assert calls and len(history["AAPL"]) == 20
    assert [key for _, key, _ in empty.records([], {})] == [b"AAPL"]  # written with the next batch
    calls.clear()
    full = _written(MIN_TICKS + 5)  # a full tail of MIN_TICKS ticks, most after the commit
    Changelog("s").history(Reader(full), SimpleNamespace(partition=2), 110, 10, read_input)  # 5 before it
    assert calls  # fewer than a window before the commit, and older ones exist: the input knows them
    calls.clear()
    Changelog("s").history(Reader(_written(10)), SimpleNamespace(partition=2), 110, 30, read_input)
    assert not calls  # a short history that is all there is


def test_a_restore_reads_back_from_the_end_only_until_every_symbol_of_the_roster_is_found():
    log = Changelog("s")
    written = []
    for batch in range(300):  # 300 batches: MSFT in the first only, AAPL in every one
        if batch == 0:
            log.extend("MSFT", 2, [0], _ticks(1))
        log.extend("AAPL", 2, [batch + 1], _ticks(1, start=batch))
        written += log.records(["AAPL"] + (["MSFT"] if batch == 0 else []), {})
    reader = Reader(written)
    reads = []
    reader.read_range = lambda tp, lo, hi=None, rr=reader.read_range: reads.append(hi - lo) or rr(tp, lo, hi)
    history, _ = Changelog("s").history(reader, SimpleNamespace(partition=2), 10_000, 5, dict)
    assert set(history) == {"AAPL", "MSFT"} and len(history["MSFT"]) == 1
    assert reads[-1] == len(written) and reads[0] < len(written)  # further back only to find MSFT
