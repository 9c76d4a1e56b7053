"""Coverage where averages hide failure: by volatility regime, after volatility jumps, and by the
standard interval backtests.

- Volatility terciles: each row's realised volatility is the standard deviation of the symbol's
  last VOL_SESSIONS log returns up to and including the one forecast (realised: it includes the
  outcome). Terciles are cut per symbol, so each symbol's calm and turbulent thirds pool.
- After jumps: per symbol, the JUMPS sessions whose return is largest against the standard
  deviation of the VOL_SESSIONS returns before it (at least AFTER_JUMP sessions apart), and the
  AFTER_JUMP sessions from each, the jump's own included.
- Kupiec's unconditional coverage test (likelihood ratio of the miss rate against 1 - level) and
  Christoffersen's independence test (does a miss make the next one likelier: first-order Markov
  chain against independence), chi-squared with 1 degree of freedom each. Pooled: Kupiec on the
  pooled counts, Christoffersen on the transitions summed over symbols (each within its symbol).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from neuropredict import intervals

VOL_SESSIONS = 20
JUMPS = 3
AFTER_JUMP = 20
TERCILES = ("low", "mid", "high")


def kupiec_p(misses: int, n: int, level: float) -> float:
    """p of Kupiec's proportion-of-failures test: misses out of n against 1 - level."""
    from scipy.stats import chi2

    if n == 0:
        return 1.0
    alpha, rate = 1.0 - level, misses / n
    lr = -2.0 * (_log_bernoulli(misses, n, alpha) - _log_bernoulli(misses, n, rate))
    return float(chi2.sf(max(lr, 0.0), 1))


def transitions(miss: np.ndarray) -> np.ndarray:
    """[[n00, n01], [n10, n11]]: hit->hit, hit->miss, miss->hit, miss->miss in one sequence."""
    miss = np.asarray(miss, dtype=bool)
    counts = np.zeros((2, 2), dtype=np.int64)
    np.add.at(counts, (miss[:-1].astype(int), miss[1:].astype(int)), 1)
    return counts


def christoffersen_p(counts: np.ndarray) -> float:
    """p of Christoffersen's independence test from transition counts (transitions())."""
    from scipy.stats import chi2

    (n00, n01), (n10, n11) = counts.tolist()
    n = n00 + n01 + n10 + n11
    if n == 0 or n01 + n11 in (0, n):
        return 1.0
    pi, pi0, pi1 = (n01 + n11) / n, _rate(n01, n00 + n01), _rate(n11, n10 + n11)
    restricted = _log_bernoulli(n01 + n11, n, pi)
    free = _log_bernoulli(n01, n00 + n01, pi0) + _log_bernoulli(n11, n10 + n11, pi1)
    return float(chi2.sf(max(-2.0 * (restricted - free), 0.0), 1))


def _rate(k: int, n: int) -> float:
    return k / n if n else 0.0


def _log_bernoulli(k: int, n: int, p: float) -> float:
    """log of p^k (1-p)^(n-k), with 0·log 0 = 0."""
    return (k * math.log(p) if k else 0.0) + ((n - k) * math.log1p(-p) if n - k else 0.0)


def regimes(rows: pd.DataFrame) -> pd.DataFrame:
    """Per row (rows sorted by symbol and time): its realised volatility, tercile (NaN where
    fewer than 2 returns are known) and whether it lies in the AFTER_JUMP sessions from a jump."""
    out = []
    for _symbol, g in rows.groupby("symbol", sort=False):
        r = np.log(g["actual"].to_numpy(np.float64) / g["persistence"].to_numpy(np.float64))
        s = pd.Series(r)
        vol = s.rolling(VOL_SESSIONS, min_periods=2).std()
        tercile = pd.qcut(vol, 3, labels=list(TERCILES))
        before = s.rolling(VOL_SESSIONS, min_periods=2).std().shift(1)
        out.append(pd.DataFrame({"volatility": vol.to_numpy(), "tercile": tercile.astype(object).to_numpy(),
                                 "after_jump": _after_jumps((s.abs() / before).to_numpy())}, index=g.index))
    return pd.concat(out).loc[rows.index]


def _after_jumps(jump: np.ndarray) -> np.ndarray:
    """True in the AFTER_JUMP rows from each of the JUMPS largest jumps, taken greedily apart."""
    flag = np.zeros(len(jump), dtype=bool)
    taken: list[int] = []
    for i in np.argsort(-np.nan_to_num(jump, nan=-np.inf)).tolist():
        if len(taken) == JUMPS or not np.isfinite(jump[i]):
            break
        if all(abs(i - j) >= AFTER_JUMP for j in taken):
            taken.append(i)
            flag[i:i + AFTER_JUMP] = True
    return flag


def conditional(rows: pd.DataFrame, levels: Sequence[float]) -> dict[str, dict]:
    """For each method whose bounds the rows carry and each level: coverage (%) pooled, within
    each volatility tercile and after jumps, and Kupiec and Christoffersen p, pooled and per symbol."""
    rows = rows.sort_values(["symbol", "time"], kind="stable")
    regime = regimes(rows)
    actual = rows["actual"].to_numpy(np.float64)
    symbols = rows["symbol"].to_numpy()
    out: dict[str, dict] = {}
    for method in [m for m in intervals.METHODS if intervals.column(m, "lower", levels[0]) in rows]:
        out[method] = {}
        for level in levels:
            lower, upper = (rows[intervals.column(method, side, level)].to_numpy(np.float64) for side in ("lower", "upper"))
            miss = (actual < lower) | (actual > upper)
            out[method][intervals.label(level)] = _judge(miss, symbols, regime, level)
    return out


def _judge(miss: np.ndarray, symbols: np.ndarray, regime: pd.DataFrame, level: float) -> dict:
    tercile, after = regime["tercile"].to_numpy(), regime["after_jump"].to_numpy(bool)
    per_symbol, pooled_counts = {}, np.zeros((2, 2), dtype=np.int64)
    for symbol in np.unique(symbols):
        mine = miss[symbols == symbol]
        counts = transitions(mine)
        pooled_counts += counts
        per_symbol[str(symbol)] = {"coverage": _coverage(mine), "kupiec_p": kupiec_p(int(mine.sum()), len(mine), level),
                                   "christoffersen_p": christoffersen_p(counts)}
    return {
        "n": int(len(miss)),
        "coverage": _coverage(miss),
        **{f"coverage_{t}_volatility": _coverage(miss[tercile == t]) for t in TERCILES},
        "coverage_after_jumps": _coverage(miss[after]),
        "rows_after_jumps": int(after.sum()),
        "kupiec_p": kupiec_p(int(miss.sum()), len(miss), level),
        "christoffersen_p": christoffersen_p(pooled_counts),
        "least_symbol_christoffersen_p": min(v["christoffersen_p"] for v in per_symbol.values()),
        "per_symbol": per_symbol,
    }


def _coverage(miss: np.ndarray) -> float:
    return 100.0 * float(1.0 - miss.mean()) if len(miss) else math.nan


def flat_metrics(table: dict[str, dict], prefix: str) -> dict[str, float]:
    """{'<prefix>_<method>_<level>_<what>': value} for MLflow (per-symbol figures left out)."""
    return {f"{prefix}_{method}_{tag}_{what}": float(value)
            for method, by_level in table.items() for tag, judged in by_level.items()
            for what, value in judged.items() if not isinstance(value, dict) and value == value}


def tercile_frame(table: dict[str, dict]) -> pd.DataFrame:
    """Long rows (interval, method, level, tercile, coverage, nominal) for the DVC plot and the chart."""
    return pd.DataFrame([
        {"interval": f"{method} {tag} % {t}", "method": method, "level": tag, "tercile": t,
         "coverage": judged[f"coverage_{t}_volatility"], "nominal": float(tag)}
        for method, by_level in table.items() for tag, judged in by_level.items() for t in TERCILES])


def format_conditional(table: dict[str, dict], title: str = "") -> str:
    """Method × level: coverage pooled, by volatility tercile and after jumps; the test p-values."""
    head = (f"{'method':<10}{'level':>6}{'cover %':>9}{'low':>7}{'mid':>7}{'high':>7}{'jumps':>7}"
            f"{'Kupiec p':>10}{'Chr. p':>9}{'least sym':>11}")
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for method, by_level in table.items():
        for tag, m in by_level.items():
            lines.append(f"{method:<10}{tag:>6}{m['coverage']:>9.1f}"
                         + "".join(f"{m[f'coverage_{t}_volatility']:>7.1f}" for t in TERCILES)
                         + f"{m['coverage_after_jumps']:>7.1f}{m['kupiec_p']:>10.3g}{m['christoffersen_p']:>9.3g}"
                         f"{m['least_symbol_christoffersen_p']:>11.3g}")
    return "\n".join(lines)
