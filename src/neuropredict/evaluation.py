"""Honest scoring: every model error beside the naive baselines on the same rows.

- persistence: next price = current price (the baseline daily prices are hard to beat);
- drift: current price times exp(the symbol's mean training log return);
- skill = 1 - MSE_model / MSE_persistence (0: as good as persistence; >0: better);
- Diebold-Mariano t of the squared-error differential (model - persistence): t >= 2 means the
  model is significantly WORSE than persistence; |t| < 2 is indistinguishable from it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

BASELINES = ("persistence", "drift")


def error_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """MSE, RMSE, MAE ($) and MAPE (%) of predicted against actual prices."""
    actual = np.asarray(actual, dtype=np.float64)
    err = np.asarray(predicted, dtype=np.float64) - actual
    mse = float(np.mean(err**2))
    return {
        "mse": mse,
        "rmse": math.sqrt(mse),
        "mae": float(np.mean(np.abs(err))),
        "mape": float(np.mean(np.abs(err) / np.abs(actual)) * 100.0),
    }


def skill(mse_model: float, mse_baseline: float) -> float:
    return float(1.0 - mse_model / mse_baseline) if mse_baseline > 0 else float("nan")


def diebold_mariano(actual: np.ndarray, model: np.ndarray, baseline: np.ndarray) -> dict[str, float]:
    """DM test on squared errors, one step ahead (no autocorrelation correction needed at h=1)."""
    return dm_test((np.asarray(model) - actual) ** 2 - (np.asarray(baseline) - actual) ** 2)


def dm_test(d: np.ndarray) -> dict[str, float]:
    """t of the mean of a loss differential (model - baseline; positive: the model is worse)."""
    d = np.asarray(d, dtype=np.float64)
    n = len(d)
    sd = float(np.std(d, ddof=1)) if n > 1 else 0.0
    if n < 2 or sd == 0.0:
        return {"dm_t": 0.0, "dm_p": 1.0}
    t = float(np.mean(d) / (sd / math.sqrt(n)))
    return {"dm_t": t, "dm_p": math.erfc(abs(t) / math.sqrt(2.0))}


def score_rows(rows: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Metrics per symbol and pooled for a frame with columns symbol, actual, predicted,
    persistence and drift (one row per forecast). Keys: '<SYMBOL>' and '_pooled'."""
    out: dict[str, dict[str, float]] = {}
    for symbol, group in rows.groupby("symbol", sort=True):
        out[str(symbol)] = _score_group(group)
    out["_pooled"] = _score_group(rows)
    symbols = [k for k in out if not k.startswith("_")]
    out["_pooled"]["mean_skill"] = float(np.mean([out[s]["skill"] for s in symbols]))
    out["_pooled"]["max_dm_t"] = float(np.max([out[s]["dm_t"] for s in symbols]))
    return out


def _score_group(g: pd.DataFrame) -> dict[str, float]:
    actual = g["actual"].to_numpy(np.float64)
    res: dict[str, float] = {"n": float(len(g))}
    res.update(error_metrics(actual, g["predicted"].to_numpy()))
    for base in BASELINES:
        if base in g:
            for k, v in error_metrics(actual, g[base].to_numpy()).items():
                res[f"{base}_{k}"] = v
    res["skill"] = skill(res["mse"], res["persistence_mse"])
    if "drift" in g:
        res["drift_skill"] = skill(res["drift_mse"], res["persistence_mse"])
    res.update(diebold_mariano(actual, g["predicted"].to_numpy(), g["persistence"].to_numpy()))
    return res


def flat_metrics(scores: Mapping[str, Mapping[str, float]], prefix: str) -> dict[str, float]:
    """{'AAPL': {'mse': 1}} -> {'<prefix>_AAPL_mse': 1}, pooled without the symbol: for MLflow."""
    flat = {}
    for key, metrics in scores.items():
        stem = prefix if key == "_pooled" else f"{prefix}_{key}"
        for name, value in metrics.items():
            if name != "n":
                flat[f"{stem}_{name}"] = float(value)
    return flat


def format_table(scores: Mapping[str, Mapping[str, float]], title: str = "") -> str:
    """A readable table: per symbol MSE beside persistence and drift, skill, DM t."""
    drift = any("drift_mse" in m for m in scores.values())
    head = (f"{'symbol':<8}{'n':>6}{'MSE':>12}{'persist.':>12}" + (f"{'drift':>12}" if drift else "")
            + f"{'skill %':>9}{'DM t':>7}{'MAPE %':>8}")
    lines = [title, head, "-" * len(head)] if title else [head, "-" * len(head)]
    for key, m in scores.items():
        name = "ALL" if key == "_pooled" else key
        lines.append(
            f"{name:<8}{int(m['n']):>6}{m['mse']:>12.4f}{m['persistence_mse']:>12.4f}"
            + (f"{m['drift_mse']:>12.4f}" if drift else "")
            + f"{100 * m['skill']:>+9.2f}{m['dm_t']:>+7.2f}{m['mape']:>8.3f}"
        )
    pooled = scores.get("_pooled")
    if pooled and "mean_skill" in pooled:
        lines.append(f"mean skill across symbols: {100 * pooled['mean_skill']:+.2f} %   "
                     f"worst DM t: {pooled['max_dm_t']:+.2f} (>= 2: significantly worse than persistence)")
    return "\n".join(lines)
