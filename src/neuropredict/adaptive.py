"""Online calibration: the model's interval quantile, tracked per symbol and level as prices arrive.

Split-conformal intervals are calibrated once, on the validation period; when volatility jumps
they are too narrow until the model's scale catches up, and too wide after it calms. Adaptive
conformal inference (Gibbs & Candès 2021) moves the interval after each realised price: with a
step η, q <- max(0, q + η·(miss - α)), α = 1 - level. A miss widens the next interval by
η·(1 - α), a hit narrows it by η·α, so over any stretch the share of misses tends to α. But the
step decides everything: a small one is right in a calm year and far too slow in a crash, a
large one the reverse (measured on 2024 and 2020, docs/pipeline.md).

So the step is not chosen: DtACI (Gibbs & Candès 2022, "Conformal inference for online prediction
with arbitrary distribution shifts") runs one such tracker per step in STEPS side by side and
serves their average weighted by how well each has done lately: each tracker's weight is
multiplied by exp(-ETA · its pinball loss on the realised score), then mixed with the uniform
SIGMA (fixed share, so a tracker out of favour can come back quickly when the market turns).
ETA and SIGMA are the authors' published defaults; STEPS is their grid of eight doubling steps,
as shares of the registered quantile. Losses are in units of the registered quantile, so the
same settings serve every symbol and level.

The state of one symbol and level is the trackers' quantiles and weights (2·len(STEPS) floats),
starting from the registered quantile with equal weights; the worker carries it in its state
topic. The trackers move on the score |return - centre| / scale of the static interval, whose
centre and scale are read back from its bounds. Offline scoring (`serve`) and the worker
(stream/online.py) both go through `track`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from neuropredict import intervals
from neuropredict.intervals import Calibration

STEPS = np.array([0.002 * 2**k for k in range(8)])  # 0.002 .. 0.256 of the registered quantile
ETA = 2.72      # how fast the weights follow the trackers' recent losses
SIGMA = 0.001   # the share of weight always spread evenly
K = len(STEPS)


def is_online(calibration: Calibration | None) -> bool:
    return calibration is not None and calibration.online


def start(q0: float, trackers: int = K) -> list[float]:
    """A fresh state: every tracker at the registered quantile, equal weights."""
    return [q0] * trackers + [1.0 / trackers] * trackers


def centre_and_scale(last: np.ndarray, lower: np.ndarray, upper: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """The log-return centre and scale behind static bounds last · exp(centre ± q · scale)."""
    lo, hi = np.log(lower / last), np.log(upper / last)
    return (lo + hi) / 2.0, (hi - lo) / (2.0 * q)


def track(states: np.ndarray, q0, level, centre: np.ndarray, scale: np.ndarray,
          realised: np.ndarray, steps: np.ndarray = STEPS) -> tuple[np.ndarray, np.ndarray]:
    """Several series at once, each a row: (S, 2K) states and (S, L) forecasts in time order ->
    the quantile each forecast is served with, (S, L), and the states after. q0 and level: one
    for every row, or one per row (a worker tracks each level's series in one call). A NaN
    realised log return (not known yet, or padding) leaves a state where it is. `steps`: the
    trackers' (one step: plain ACI, as the benchmark compares). Many series step together in
    NumPy; a few long ones (a backlog of one symbol) in plain Python, ~6x faster there: the same
    arithmetic."""
    track_rows = _track_vectorised if len(states) >= VECTORISE_FROM else _track_scalar
    return track_rows(states, q0, level, centre, scale, realised, np.asarray(steps, dtype=np.float64))


VECTORISE_FROM = 6  # series: below, a NumPy call per step costs more than the arithmetic


def _per_row(value, rows: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (rows,))


def _track_vectorised(states, q0, level, centre, scale, realised, steps):
    """The scalar arithmetic (same association: a miss's and a hit's move and weight factor per
    row), a step for every series at once; each step's NumPy calls are the cost, so the scores
    and which are known are computed for all steps first."""
    k, rows = len(steps), len(states)
    q, w = states[:, :k].copy(), states[:, k:].copy()
    q0, level = _per_row(q0, rows)[:, None], _per_row(level, rows)[:, None]
    alpha = 1.0 - level
    up, down = steps * q0 * level, steps * q0 * alpha
    miss_factor, hit_factor = -ETA * level, ETA * alpha
    with np.errstate(invalid="ignore"):  # NaN: not known yet, or padding
        scores = np.abs(realised - centre) / scale
    known = ~np.isnan(realised)
    all_known, any_known = known.all(axis=0), known.any(axis=0)
    used = np.empty(centre.shape)
    for j in range(centre.shape[1]):
        used[:, j] = (w * q).sum(axis=1)
        if all_known[j]:  # the usual case: whole arrays, no indexing
            q, w = _step(q, w, scores[:, j, None], q0, up, down, miss_factor, hit_factor, k)
        elif any_known[j]:
            r = known[:, j]
            q[r], w[r] = _step(q[r], w[r], scores[r, j, None], q0[r], up[r], down[r], miss_factor[r], hit_factor[r], k)
    return used, np.hstack([q, w])


def _step(q, w, score, q0, up, down, miss_factor, hit_factor, k):
    """Every row's trackers after one realised score: (quantiles, weights)."""
    over = (score - q) / q0
    miss = over > 0
    w = w * np.exp(np.where(miss, miss_factor, hit_factor) * over)
    q = np.where(miss, q + up, np.maximum(0.0, q - down))
    return q, (1.0 - SIGMA) * w / w.sum(axis=1, keepdims=True) + SIGMA / k


def _track_scalar(states, q0, level, centre, scale, realised, steps):
    k, exp = len(steps), math.exp
    used, after = np.empty(centre.shape), np.empty(states.shape)
    q0, level = _per_row(q0, len(states)).tolist(), _per_row(level, len(states)).tolist()
    for i, state in enumerate(states.tolist()):
        q0_i, level_i = q0[i], level[i]
        alpha = 1.0 - level_i
        up, down = (steps * q0_i * level_i).tolist(), (steps * q0_i * alpha).tolist()  # a miss's and a hit's move
        q, w, row = state[:k], state[k:], used[i]
        for j, (c, s, r) in enumerate(zip(centre[i].tolist(), scale[i].tolist(), realised[i].tolist())):
            row[j] = sum(a * b for a, b in zip(w, q))
            if r != r:  # NaN: not known
                continue
            score = abs(r - c) / s
            for m in range(k):
                over = (score - q[m]) / q0_i
                if over > 0:
                    w[m] *= exp(-ETA * level_i * over)
                    q[m] += up[m]
                else:
                    w[m] *= exp(ETA * alpha * over)
                    q[m] = max(0.0, q[m] - down[m])
            total = sum(w)
            w = [(1.0 - SIGMA) * x / total + SIGMA / k for x in w]
        after[i, :k], after[i, k:] = q, w
    return used, after


def padded(groups: list[np.ndarray], values: np.ndarray) -> np.ndarray:
    """(S, L) of each group's values in order, NaN-padded (L: the longest group)."""
    out = np.full((len(groups), max((len(g) for g in groups), default=0)), np.nan)
    for i, g in enumerate(groups):
        out[i, :len(g)] = values[g]
    return out


def with_static(bounds: dict[str, np.ndarray], levels) -> dict[str, np.ndarray]:
    """Bounds with the static model interval also as `conformal` (the served one before any outcome)."""
    return {**bounds, **{intervals.column(intervals.STATIC, side, p): bounds[intervals.column("model", side, p)]
                         for p in levels for side in ("lower", "upper")}}


def serve(rows: pd.DataFrame, calibration: Calibration | None, steps: np.ndarray = STEPS) -> pd.DataFrame:
    """Rows of consecutive forecasts (symbol, time, persistence, actual, the model's static bounds)
    with the intervals a worker serves: adaptive ones as the model's, the static ones as
    `conformal`; each symbol tracked from a fresh state at its first row. Unchanged where the
    calibration is static."""
    if not is_online(calibration):
        return rows
    order = np.lexsort((rows["time"].to_numpy(), rows["symbol"].to_numpy()))
    symbols = rows["symbol"].to_numpy()
    groups = [order[symbols[order] == s] for s in np.unique(symbols)]
    last, actual = rows["persistence"].to_numpy(np.float64), rows["actual"].to_numpy(np.float64)
    out = with_static({c: rows[c].to_numpy(np.float64) for c in rows.columns if c.startswith(("lower_", "upper_"))},
                      calibration.levels)
    for level in calibration.levels:
        q0 = calibration.quantiles["model"][intervals.label(level)]
        lower, upper = (out[intervals.column(intervals.STATIC, side, level)] for side in ("lower", "upper"))
        centre, scale = centre_and_scale(last, lower, upper, q0)
        used, _ = track(np.array([start(q0, len(steps))] * len(groups)), q0, level, padded(groups, centre),
                        padded(groups, scale), padded(groups, np.log(actual / last)), steps)
        served = np.empty(len(rows))
        for i, g in enumerate(groups):
            served[g] = used[i, :len(g)]
        out[intervals.column("model", "lower", level)] = last * np.exp(centre - served * scale)
        out[intervals.column("model", "upper", level)] = last * np.exp(centre + served * scale)
    return rows.assign(**out)
