"""Live scoring: each forecast meets the price it forecast (the symbol's next accepted tick in
the same segment), beside persistence (the price it was made at) on exactly the same ticks, and
its intervals beside the EWMA baseline's."""

from __future__ import annotations

import numpy as np

from neuropredict import intervals
from neuropredict.stream.batch import Batch
from neuropredict.stream.state import Advance, SymbolState

Keys = tuple[tuple[str, float], ...]  # (method, level) of each scored interval: intervals.live_keys


def interval_sums(actual: np.ndarray, last: np.ndarray, bounds: np.ndarray, keys: Keys) -> dict:
    """(rows, rows inside, sum of interval scores in % of the last price) per key; rows without
    bounds (NaN) are not counted."""
    out = {}
    for j, (method, level) in enumerate(keys):
        lower, upper = bounds[:, 2 * j], bounds[:, 2 * j + 1]
        has = ~np.isnan(lower)
        a, lo, hi, p = actual[has], lower[has], upper[has], last[has]
        score = 100 * intervals.interval_score(a, lo, hi, level) / p
        out[(method, level)] = (float(has.sum()), float(np.count_nonzero((a >= lo) & (a <= hi))), float(score.sum()))
    return out


def score_forecasts(symbol: str, st: SymbolState, step: Advance, forecasts: np.ndarray, bounds: np.ndarray,
                    keys: Keys, version: str) -> list[tuple]:
    """Score the symbol's open forecast and this batch's forecasts (NaN: warm-up) against the
    next accepted price in the same segment, beside persistence, and their intervals (`bounds`:
    a row of intervals.bound_columns(keys) per forecast). Returns the contributions (arguments of
    `LiveStats.score`), to apply once the batch is committed; leaves the batch's last forecast open."""
    if not len(step.accepted):
        return []
    actual, opened = step.prices, st.open
    prev_pred = np.concatenate(([opened.forecast], forecasts[:-1]))
    prev_price = np.concatenate(([opened.price], actual[:-1]))
    open_row = opened.bounds if opened.keys == keys else np.full(bounds.shape[1], np.nan)
    prev_bounds = np.vstack([open_row[None, :], bounds[:-1]])
    same = ((np.concatenate(([opened.session], step.sessions[:-1])) == step.sessions)
            & (np.concatenate(([opened.level], step.levels[:-1])) == step.levels))
    ok = ~np.isnan(prev_pred) & same
    out = []
    if ok[0] and opened.version != version:  # made before a hot swap: scored under its own version
        out.append((symbol, opened.version, actual[:1] - prev_pred[:1], actual[:1] - prev_price[:1],
                    interval_sums(actual[:1], prev_price[:1], opened.bounds[None, :], opened.keys)))
        ok[0] = False
    out.append((symbol, version, actual[ok] - prev_pred[ok], actual[ok] - prev_price[ok],
                interval_sums(actual[ok], prev_price[ok], prev_bounds[ok], keys)))
    st.carry(forecasts[-1], bounds[-1], keys, version, step)
    return out


def score_batch(batch: Batch, states: dict[str, SymbolState], forecasts: np.ndarray, bounds: np.ndarray,
                keys: Keys, version: str) -> list[tuple]:
    """score_forecasts of each symbol of the batch (forecasts and bounds: one row per tick of it)."""
    return [c for symbol, step in batch.steps.items() for c in score_forecasts(
        symbol, states[symbol], step, forecasts[batch.accepted(symbol)], bounds[batch.accepted(symbol)], keys, version)]
