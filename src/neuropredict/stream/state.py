"""Per-symbol state of a serving worker: the data-quality guard, the window of recent prices and
the open forecast. A symbol's ticks of a batch go through `SymbolBook.advance`, live and when
the state is rebuilt from the topic (restore), so both take exactly the same decisions.

A segment is a (session, level) pair: windows and scoring never cross a session (the session
rule in `features.session_ids`) nor a new price level accepted by the rules.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from neuropredict.features import session_ids
from neuropredict.messages import Tick
from neuropredict.stream.rules import NEW_LEVEL, Guard, TickRules

NO_SEGMENT = -1


@dataclass
class SymbolState:
    """One symbol: its guard, its last W accepted prices, and its open forecast."""

    partition: int
    guard: Guard = field(default_factory=Guard)
    prices: np.ndarray = field(default_factory=lambda: np.empty(0))
    session: int = NO_SEGMENT  # segment of the buffered prices ...
    level: int = NO_SEGMENT
    open_forecast: float = math.nan  # the forecast of the next price ...
    open_version: str = ""           # ... the model version that made it ...
    open_price: float = math.nan     # ... the price it was made at (persistence's forecast) ...
    open_bounds: np.ndarray = field(default_factory=lambda: np.empty(0))  # ... its intervals ...
    open_keys: tuple = ()            # ... (which: intervals.live_keys of its version) ...
    open_session: int = NO_SEGMENT   # ... and its segment (scored only within it)
    open_level: int = NO_SEGMENT
    last_day: int = NO_SEGMENT       # exchange day of the last accepted tick (cadence check)
    cadence_warned: bool = False


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

    def reopen(self, symbol: str, forecast: float, bounds: np.ndarray, keys: tuple, version: str) -> None:
        """After a rebuild: the forecast the symbol's last tick made is open again."""
        st = self.states[symbol]
        st.open_forecast, st.open_version, st.open_price = forecast, version, float(st.prices[-1])
        st.open_bounds, st.open_keys = bounds, keys
        st.open_session, st.open_level = st.session, st.level

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
