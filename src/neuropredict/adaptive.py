"""Online calibration: the model's interval quantile, tracked per symbol and level as prices arrive.

Split-conformal intervals are calibrated once, on the validation period; when volatility jumps
they are too narrow until the model's scale catches up, and too wide after it calms. Quantile
tracking (the P term of conformal PID control, Angelopoulos, Candès & Tibshirani 2023; with a
fixed score set it is adaptive conformal inference, Gibbs & Candès 2021) moves the quantile
after each realised price:

    q <- max(0, q + η · (miss - α)),   α = 1 - level,   η = step · q_registered

A miss widens the next interval by η·(1-α), a hit narrows it by η·α, so over any stretch the
share of misses tends to α whatever the returns do (|misses/n - α| <= (q_max + η)/(η·n)). Why
this and not ACI's update of α itself: it needs no stored score set (a float per symbol and
level is the whole state, which the serving state carries) and never yields an infinite
interval. It starts from the registered quantile, so a new version starts where its
calibration left it.

The interval is the static one's centre and scale with the tracked q in place of the
registered one: last · exp(centre ± q · scale), centre and scale read back from the static
bounds. Offline scoring (`serve`) and the worker (stream/online.py) both go through `track`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from neuropredict import intervals
from neuropredict.intervals import Calibration


def centre_and_scale(last: np.ndarray, lower: np.ndarray, upper: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """The log-return centre and scale behind static bounds last · exp(centre ± q · scale)."""
    lo, hi = np.log(lower / last), np.log(upper / last)
    return (lo + hi) / 2.0, (hi - lo) / (2.0 * q)


def track(q: float, step: float, level: float, centre: np.ndarray, scale: np.ndarray,
          realised: np.ndarray) -> tuple[np.ndarray, float]:
    """The quantile each forecast in turn is made with, and the one after the last: a row whose
    realised log return is NaN (not yet known) leaves q where it is."""
    used = np.empty(len(centre))
    alpha = 1.0 - level
    for i, (c, s, r) in enumerate(zip(centre.tolist(), scale.tolist(), realised.tolist())):
        used[i] = q
        if r == r:  # not NaN
            miss = abs(r - c) > q * s
            q = max(0.0, q + step * (miss - alpha))
    return used, q


def is_online(calibration: Calibration | None) -> bool:
    return calibration is not None and calibration.online_step > 0


def with_static(bounds: dict[str, np.ndarray], levels) -> dict[str, np.ndarray]:
    """Bounds with the static model interval also as `conformal` (the served one before any outcome)."""
    return {**bounds, **{intervals.column(intervals.STATIC, side, p): bounds[intervals.column("model", side, p)]
                         for p in levels for side in ("lower", "upper")}}


def serve(rows: pd.DataFrame, calibration: Calibration | None) -> pd.DataFrame:
    """Rows of consecutive forecasts (symbol, time, persistence, actual, the model's static bounds)
    with the intervals a worker serves: adaptive ones as the model's, the static ones as
    `conformal`; each symbol tracked from the registered quantile at its first row. Unchanged
    where the calibration is static."""
    if not is_online(calibration):
        return rows
    order = np.lexsort((rows["time"].to_numpy(), rows["symbol"].to_numpy()))
    last, actual = rows["persistence"].to_numpy(np.float64), rows["actual"].to_numpy(np.float64)
    symbols = rows["symbol"].to_numpy()
    out = with_static({c: rows[c].to_numpy(np.float64) for c in rows.columns if c.startswith(("lower_", "upper_"))},
                      calibration.levels)
    for level in calibration.levels:
        q0 = calibration.quantiles["model"][intervals.label(level)]
        lower, upper = (out[intervals.column(intervals.STATIC, side, level)].copy() for side in ("lower", "upper"))
        for symbol in np.unique(symbols):
            idx = order[symbols[order] == symbol]
            centre, scale = centre_and_scale(last[idx], lower[idx], upper[idx], q0)
            used, _ = track(q0, calibration.online_step * q0, level, centre, scale, np.log(actual[idx] / last[idx]))
            lower[idx], upper[idx] = last[idx] * np.exp(centre - used * scale), last[idx] * np.exp(centre + used * scale)
        out[intervals.column("model", "lower", level)], out[intervals.column("model", "upper", level)] = lower, upper
    return rows.assign(**out)
