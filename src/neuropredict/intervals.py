"""Prediction intervals: how far the next price may move, and how honestly that is said.

Every method forecasts the next log return as a centre and a scale. Intervals are
split-conformal: on the validation period (after training, before the test year) the scaled
residuals |return - centre| / scale are collected, and the interval at level p is
centre ± q_p · scale, where q_p is their ceil((n+1)·p)-th smallest. Pooled validation coverage is
then p whatever the shape of the tails; the test year says whether it holds out of sample.

The model is scored beside three baselines centred on persistence (a return of 0) and calibrated
the same way, so the comparison is between volatility forecasts, not calibrations:
- constant: the symbol's standard deviation of training returns;
- ewma: RiskMetrics' exponentially weighted variance over the window's returns;
- garch: GARCH(1,1) over the window's returns, fitted per symbol on the training period.
Both recursions start from the training variance and read the window alone (volatility.py), so
the worker computes exactly what offline scoring does.

With `online` on, the model's served interval is adaptive (adaptive.py): its quantile is
tracked per symbol and level as prices arrive, widening after misses and narrowing after hits;
`conformal` is then the static split-conformal interval it started from, scored beside it.

Scores per level, in % of the last price so that symbols pool: coverage, mean width and the
interval (Winkler) score, width + 2/α · distance outside (lower is better; a proper score for the
pair of quantiles), with a Diebold-Mariano t of the model's score minus each baseline's on the
same rows and an exact binomial test of coverage against nominal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from neuropredict import volatility
from neuropredict.errors import ConfigError
from neuropredict.files import read_json, write_json

CALIBRATION_FILE = "intervals.json"
SPREAD_METHODS = ("model", "constant", "ewma", "garch")  # a centre and a scale, calibrated on validation
STATIC = "conformal"  # the model's static interval, when the served one ("model") is adaptive
METHODS = ("model", STATIC, "constant", "ewma", "garch")  # every interval scored
BASELINES = ("constant", "ewma", "garch")
LIVE_METHODS = ("model", STATIC, "ewma", "garch")  # what a worker scores on the live ticks


def label(level: float) -> str:
    """0.8 -> '80', 0.975 -> '97.5': the suffix of every column, metric and message field."""
    return f"{100 * level:g}"


def column(method: str, side: str, level: float | str) -> str:
    """'lower_80' for the model (the names in prediction messages), 'ewma_upper_95' for a baseline."""
    name = f"{side}_{level if isinstance(level, str) else label(level)}"
    return name if method == "model" else f"{method}_{name}"


@dataclass(frozen=True)
class Spread:
    """A forecast distribution of the next log return, row by row."""

    centre: np.ndarray  # (n,) log return
    scale: np.ndarray   # (n,) > 0, log-return units


def baseline_spreads(windows: np.ndarray, training_sd: np.ndarray, lam: float,
                     garch: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Spread]:
    """The baselines' spreads (GARCH's only given each row's (α, β))."""
    zero = np.zeros(len(windows))
    out = {"constant": Spread(zero, np.asarray(training_sd, dtype=np.float64)),
           "ewma": Spread(zero, volatility.ewma_scale(windows, training_sd, lam))}
    if garch is not None:
        out["garch"] = Spread(zero, volatility.garch_scale(windows, training_sd, *garch))
    return out


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The ceil((n+1)·level)-th smallest score: coverage >= level for an exchangeable new row."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    rank = math.ceil((len(scores) + 1) * level)
    if rank > len(scores):
        raise ConfigError(f"{len(scores)} validation rows cannot calibrate a {label(level)} % interval: "
                          f"lengthen the validation period or lower intervals.levels")
    return float(scores[rank - 1])


@dataclass(frozen=True)
class Calibration:
    """What turns spreads into intervals; saved beside the model, so it travels with each version."""

    levels: tuple[float, ...]
    quantiles: dict[str, dict[str, float]]  # method -> level label -> q
    ewma_lambda: float
    period: str  # the validation period it was fitted on
    rows: int
    network_weight: float = 1.0  # the model's scale: sqrt(w · network² + (1 - w) · EWMA²)
    online: bool = False  # the served interval's quantile tracked online (adaptive.py); else static

    @classmethod
    def fit(cls, spreads: dict[str, Spread], returns: np.ndarray, levels: Sequence[float], ewma_lambda: float,
            period: str, network_weight: float = 1.0, online: bool = False) -> Calibration:
        """Conformal quantiles of each method's scaled residuals on the validation rows."""
        quantiles = {}
        for method, spread in spreads.items():
            scores = np.abs(returns - spread.centre) / spread.scale
            quantiles[method] = {label(p): conformal_quantile(scores, p) for p in levels}
        return cls(tuple(levels), quantiles, ewma_lambda, period, len(returns), network_weight, online)

    def bounds(self, spreads: dict[str, Spread], last: np.ndarray) -> dict[str, np.ndarray]:
        """Price bounds of every method and level: last · exp(centre ± q · scale)."""
        out = {}
        for method, spread in spreads.items():
            for level in self.levels:
                q = self.quantiles[method][label(level)]
                out[column(method, "lower", level)] = last * np.exp(spread.centre - q * spread.scale)
                out[column(method, "upper", level)] = last * np.exp(spread.centre + q * spread.scale)
        return out

    def save(self, folder: Path) -> None:
        write_json(Path(folder) / CALIBRATION_FILE, asdict(self))

    @classmethod
    def load(cls, folder: Path) -> Calibration | None:
        """None for a model saved before intervals existed: it serves point forecasts only."""
        path = Path(folder) / CALIBRATION_FILE
        if not path.is_file():
            return None
        d = read_json(path)
        return cls(tuple(d["levels"]), d["quantiles"], d["ewma_lambda"], d["period"], d["rows"],
                   d.get("network_weight", 1.0), d.get("online", False))


# ---- scoring ----


def blend_fit(spread: Spread, returns: np.ndarray, symbols: np.ndarray, calibration: Calibration) -> tuple[float, float]:
    """How a calibrated model spread does on the rows it was calibrated on: the least binomial p
    of any symbol's coverage at any level, and the mean interval score (% of the price, in log
    returns) over the levels."""
    least_p, scores = 1.0, []
    residual = np.abs(returns - spread.centre) / spread.scale
    for level in calibration.levels:
        q = calibration.quantiles["model"][label(level)]
        for symbol in np.unique(symbols):
            mine = residual[symbols == symbol]
            least_p = min(least_p, binomial_p(int(np.count_nonzero(mine <= q)), len(mine), level))
        lower, upper = spread.centre - q * spread.scale, spread.centre + q * spread.scale
        scores.append(100 * float(np.mean(interval_score(returns, lower, upper, level))))
    return least_p, float(np.mean(scores))


def interval_score(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray, level: float) -> np.ndarray:
    """Winkler's score per row, in the units of the prices."""
    alpha = 1.0 - level
    below, above = np.maximum(lower - actual, 0.0), np.maximum(actual - upper, 0.0)
    return (upper - lower) + 2.0 / alpha * (below + above)


def binomial_p(hits: int, n: int, level: float) -> float:
    """Exact two-sided binomial test of `hits` in `n` against coverage `level`."""
    from scipy.stats import binomtest

    return float(binomtest(hits, n, level).pvalue) if n else 1.0


def score(rows: pd.DataFrame, levels: Sequence[float]) -> dict[str, dict[str, float]]:
    """Per symbol and pooled ('_pooled'): for each level, each method's coverage (%), mean width
    and interval score (% of the last price), the binomial p of the model's (served and static),
    and DM t of their interval scores minus each baseline's, and the served minus the static
    (negative: better than it). Methods whose bounds are not among the columns are left out."""
    out = {str(s): _score_group(g, levels) for s, g in rows.groupby("symbol", sort=True)}
    out["_pooled"] = _score_group(rows, levels)
    return out


def _score_group(g: pd.DataFrame, levels: Sequence[float]) -> dict[str, float]:
    from neuropredict.evaluation import dm_test

    actual, last = g["actual"].to_numpy(np.float64), g["persistence"].to_numpy(np.float64)
    res: dict[str, float] = {"n": float(len(g))}
    methods = [m for m in METHODS if column(m, "lower", levels[0]) in g]  # a stream carries the model's only
    for level in levels:
        tag, losses = label(level), {}
        for method in methods:
            lower, upper = (g[column(method, side, level)].to_numpy(np.float64) for side in ("lower", "upper"))
            hit = (actual >= lower) & (actual <= upper)
            losses[method] = 100 * interval_score(actual, lower, upper, level) / last
            prefix = _prefix(method)
            res[f"{prefix}coverage_{tag}"] = 100 * float(hit.mean())
            res[f"{prefix}width_{tag}"] = 100 * float(np.mean((upper - lower) / last))
            res[f"{prefix}interval_score_{tag}"] = float(losses[method].mean())
            if method in ("model", STATIC):
                res[f"{prefix}coverage_p_{tag}"] = binomial_p(int(hit.sum()), len(g), level)
        for method, bases in (("model", (STATIC, *BASELINES)), (STATIC, BASELINES)):
            for base in [b for b in bases if method in losses and b in losses]:
                res[f"{_prefix(method)}interval_dm_t_{base}_{tag}"] = dm_test(losses[method] - losses[base])["dm_t"]
    return res


def miscalibrated(scores: dict[str, dict[str, float]], levels: Sequence[float], min_p: float) -> list[str]:
    """'AAPL 80 %: 71.2 % (p = 0.003)' for each symbol whose coverage is significantly off nominal."""
    return [f"{s} {label(level)} %: {m[f'coverage_{label(level)}']:.1f} % (p = {m[f'coverage_p_{label(level)}']:.2g})"
            for s, m in scores.items() if not s.startswith("_") for level in levels
            if m[f"coverage_p_{label(level)}"] < min_p]


def format_table(scores: dict[str, dict[str, float]], levels: Sequence[float], title: str = "") -> str:
    """Per symbol and level: coverage, width and interval score of the model beside each baseline
    present, and the DM t of the model's interval score against each."""
    first = label(levels[0])
    methods = [m for m in METHODS if f"{_prefix(m)}coverage_{first}" in scores["_pooled"]]
    bases = [m for m in (STATIC, *BASELINES) if f"interval_dm_t_{m}_{first}" in scores["_pooled"]]
    width = max(7 * len(methods) + 2, 14)  # of each block of columns
    names = f"{''.join(f'{m[:5]:>7}' for m in methods):>{width - 2}}"
    head = (f"{'symbol':<8}{'level':>6}" + "".join(f"{h:>{width}}" for h in ("coverage %", "width %", "int. score %"))
            + (f"{'DM t vs ' + '/'.join(b[:5] for b in bases):>{8 * len(bases) + 4}}" if bases else ""))
    lines = ([title] if title else []) + [head, f"{'':<14}" + f"  {names}" * 3, "-" * len(head)]
    for key, m in scores.items():
        for level in levels:
            t = label(level)
            line = f"{'ALL' if key == '_pooled' else key:<8}{t:>6}"
            for metric, fmt in (("coverage", ".1f"), ("width", ".2f"), ("interval_score", ".3f")):
                line += f"{''.join(format(m[f'{_prefix(x)}{metric}_{t}'], '>7' + fmt) for x in methods):>{width}}"
            line += "    " + "".join(f"{m[f'interval_dm_t_{b}_{t}']:>+8.2f}" for b in bases)
            lines.append(line.rstrip())
    return "\n".join(lines)


def live_keys(calibration: Calibration | None) -> tuple[tuple[str, float], ...]:
    """(method, level) of each interval a worker scores live, in the order of its bound columns."""
    if calibration is None:
        return ()
    static = (STATIC,) if calibration.online else ()  # else the same as the model's
    return tuple((m, p) for m in LIVE_METHODS if m in (*calibration.quantiles, *static) for p in calibration.levels)


def bound_columns(keys: Sequence[tuple[str, float]]) -> list[str]:
    """lower, upper of each key in turn: the columns of a worker's bounds matrix."""
    return [column(m, side, p) for m, p in keys for side in ("lower", "upper")]


def metric_name(method: str, what: str, level: float) -> str:
    """'coverage_80' for the model, 'ewma_interval_score_95' for a baseline (offline and live)."""
    return f"{_prefix(method)}{what}_{label(level)}"


def _prefix(method: str) -> str:
    return "" if method == "model" else f"{method}_"
