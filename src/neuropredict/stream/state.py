"""Per-symbol state of a serving worker: the data-quality guard, the window of recent prices and
the open forecast. A symbol's ticks of a batch go through `SymbolBook.advance`, live and when
the state is rebuilt from the topic (restore), so both take exactly the same decisions.

A segment is a (session, level) pair: windows and scoring never cross a session (the session
rule in `features.session_ids`) nor a new price level accepted by the rules.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from neuropredict.features import session_ids
from neuropredict.messages import Tick
from neuropredict.stream.rules import NEW_LEVEL, Guard, TickRules

log = logging.getLogger(__name__)
NO_SEGMENT = -1


@dataclass
class OpenForecast:
    """A forecast waiting for the price it forecast: the model version that made it, the price
    it was made at (persistence's forecast), its intervals (which: intervals.live_keys of its
    version), its segment (it is scored only within it) and the online quantiles its served
    intervals were made with (stream/online.py; none where they are static)."""

    forecast: float = math.nan
    version: str = ""
    price: float = math.nan
    bounds: np.ndarray = field(default_factory=lambda: np.empty(0))
    keys: tuple = ()
    session: int = NO_SEGMENT
    level: int = NO_SEGMENT
    quantiles: dict[str, float] = field(default_factory=dict)


@dataclass
class SymbolState:
    """One symbol: its guard, its last W accepted prices, and its open forecast. The open
    forecast is written here only: by `carry` (live), `reopen` and `keep` (restore)."""

    partition: int
    guard: Guard = field(default_factory=Guard)
    prices: np.ndarray = field(default_factory=lambda: np.empty(0))
    session: int = NO_SEGMENT  # segment of the buffered prices
    level: int = NO_SEGMENT
    open: OpenForecast = field(default_factory=OpenForecast)
    last_day: int = NO_SEGMENT  # exchange day of the last accepted tick (cadence check)
    cadence_warned: bool = False
    quantiles: dict[str, float] = field(default_factory=dict)  # level label -> the online quantile (online.py)
    quantiles_version: str = ""  # ... of this version

    def carry(self, forecast: float, bounds: np.ndarray, keys: tuple, version: str, step: Advance) -> None:
        """After a batch: the forecast of its last accepted tick stays open."""
        quantiles = dict(self.quantiles) if self.quantiles_version == version else {}
        self.open = OpenForecast(float(forecast), version, float(step.prices[-1]), bounds.copy(), keys,
                                 int(step.sessions[-1]), int(step.levels[-1]), quantiles)

    def reopen(self, forecast: float, bounds: np.ndarray, keys: tuple, version: str) -> None:
        """After a rebuild: the forecast the last tick made (published before the stop) is open again."""
        self.open = OpenForecast(forecast, version, float(self.prices[-1]), bounds, keys, self.session, self.level)

    def keep(self, previous: OpenForecast) -> None:
        """After a rebuild for a hot swap: the forecast the previous model left open, in the
        rebuilt state's segment when it was made at the price the state ends with (a rebuilt
        guard counts price levels afresh); else none."""
        if len(self.prices) and previous.price == self.prices[-1]:
            self.open = dataclasses.replace(previous, session=self.session, level=self.level)
            self.quantiles, self.quantiles_version = dict(previous.quantiles), previous.version  # go on from them
        else:
            self.open = dataclasses.replace(previous, forecast=math.nan)


@dataclass
class Screened:
    """The rules' verdicts on a run of one symbol's ticks."""

    accepted: np.ndarray   # positions of the accepted ticks ...
    sessions: np.ndarray   # ... and their segments
    levels: np.ndarray
    rejected: list[tuple[int, str]]  # (position, reason)
    new_levels: int


def screen(guard: Guard, symbol: str, times: np.ndarray, prices: np.ndarray, stamps: list[str],
           rules: TickRules, intraday: bool) -> Screened:
    """A symbol's ticks through its guard: which pass, and the segment of each (live, restore
    and evaluate all screen with this)."""
    level_before = guard.level
    verdicts = guard.check(symbol, times, prices, stamps, rules)
    if verdicts is None:
        accepted, rejected = np.arange(len(times)), []
        levels = np.full(len(times), level_before, dtype=np.int64)
    else:
        accepted = np.array([i for i, v in enumerate(verdicts) if v is None or v == NEW_LEVEL], dtype=np.int64)
        rejected = [(i, v) for i, v in enumerate(verdicts) if v is not None and v != NEW_LEVEL]
        levels = level_before + np.cumsum([v == NEW_LEVEL for v in verdicts], dtype=np.int64)[accepted]
    return Screened(accepted, session_ids(times[accepted], intraday), levels, rejected,
                    int(levels[-1] - level_before) if len(levels) else 0)


@dataclass
class Advance:
    """What one symbol's ticks of a batch became."""

    accepted: np.ndarray   # positions (in the ticks given) that passed the rules
    prices: np.ndarray     # their prices ...
    sessions: np.ndarray   # ... and segments
    levels: np.ndarray
    rejected: list[tuple[int, str]]  # (position, reason): dead letters
    windows: np.ndarray    # (k, W) full windows, one per forecast ...
    owners: np.ndarray     # ... and the accepted positions they end at
    new_levels: int = 0    # ticks accepted as a new price level (the window restarted)
    same_day: int = 0      # accepted ticks on the same day as the one before (daily models)


class SymbolBook:
    """Every symbol this worker owns, for one model's window and session rule."""

    def __init__(self, rules: TickRules, window: int, intraday: bool):
        self.rules, self.window, self.intraday = rules, window, intraday
        self.states: dict[str, SymbolState] = {}

    def advance(self, symbol: str, partition: int, ticks: Sequence[Tick]) -> Advance:
        """Run a symbol's ticks (in order) through the rules, then append the accepted ones to
        its window; return the full windows that end at each accepted tick (earlier: warm-up)."""
        st = self.states.get(symbol)
        if st is None:
            st = self.states[symbol] = SymbolState(partition)
        times = np.fromiter((t.time_s for t in ticks), np.float64, len(ticks))
        prices = np.fromiter((t.price for t in ticks), np.float64, len(ticks))
        s = screen(st.guard, symbol, times, prices, [t.timestamp for t in ticks], self.rules, self.intraday)
        kept = prices[s.accepted]
        windows, rows = self._windows(st, kept, s.sessions, s.levels)
        return Advance(s.accepted, kept, s.sessions, s.levels, s.rejected, windows, s.accepted[rows], s.new_levels,
                       self._same_day(st, times[s.accepted]))

    def _windows(self, st: SymbolState, prices: np.ndarray, sessions: np.ndarray,
                 levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = self.window
        out, rows = [], []
        for start, end in _runs(sessions, levels):
            same = sessions[start] == st.session and levels[start] == st.level
            seq = np.concatenate([st.prices, prices[start:end]]) if same else prices[start:end]
            full = len(seq) - w + 1
            if full > 0:
                take = min(full, end - start)
                out.append(sliding_window_view(seq, w)[-take:])
                rows.extend(range(end - take, end))
            st.prices = seq[-w:].copy()
            st.session, st.level = int(sessions[start]), int(levels[start])
        windows = np.concatenate(out) if out else np.empty((0, w))
        return windows, np.asarray(rows, dtype=np.int64)

    def _same_day(self, st: SymbolState, times: np.ndarray) -> int:
        """Daily models forecast the next daily close: count ticks that share a day."""
        if self.intraday or not len(times):
            return 0
        days = session_ids(times, intraday=True)
        repeats = int(np.count_nonzero(days == np.concatenate(([st.last_day], days[:-1]))))
        st.last_day = int(days[-1])
        return repeats

    def warn_once(self, steps: dict[str, Advance], level_shift_ticks: int, version: str) -> None:
        """Say what the rules did that an operator should know: a lasting new price level (each
        time), and sub-daily ticks to a daily model (once per symbol)."""
        for symbol, step in steps.items():
            state = self.states[symbol]
            if step.new_levels:
                log.warning("%s: %d consecutive ticks at a new price level (the ones before it are dead letters): "
                            "its window restarts there", symbol, level_shift_ticks)
            if step.same_day and not state.cadence_warned:
                state.cadence_warned = True
                log.warning("%s: several ticks on one day, but model v%s forecasts daily closes; its forecasts for "
                            "sub-daily ticks are not calibrated (train with data.interval: 1m)", symbol, version)

    def full_window(self, symbol: str) -> np.ndarray | None:
        st = self.states.get(symbol)
        return st.prices[-self.window:] if st is not None and len(st.prices) >= self.window else None

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget the symbols of partitions this worker no longer owns."""
        gone = set(partitions)
        for symbol in [s for s, st in self.states.items() if st.partition in gone]:
            del self.states[symbol]


def _runs(sessions: np.ndarray, levels: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of consecutive ticks in one segment."""
    if not len(sessions):
        return []
    cuts = np.flatnonzero((sessions[1:] != sessions[:-1]) | (levels[1:] != levels[:-1])) + 1
    edges = [0, *cuts.tolist(), len(sessions)]
    return list(zip(edges[:-1], edges[1:]))
