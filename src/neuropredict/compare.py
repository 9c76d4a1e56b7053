"""`neuropredict compare`: two versions on the same live ticks, recomputed from the topics.

Production's forecasts (`predicted_prices`) and the shadows' (their own topic) are read back
`read_committed` and joined with the input ticks exactly as `evaluate` does (the worker's rules, in
the same order). Each version's figures on all its ticks equal what the workers reported; the
comparison pairs the ticks both versions forecast: n, MSE of each and of persistence, skill, the
Diebold-Mariano t of B's squared errors minus A's (positive: B is worse), and each one's interval
coverage and score per level, per symbol and pooled.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neuropredict import intervals, plots, stream_report
from neuropredict.errors import NeuropredictError
from neuropredict.evaluation import dm_test, score_rows, skill
from neuropredict.files import write_json
from neuropredict.settings.contracts import PRODUCTION_ALIAS, Topics
from neuropredict.settings.schema import Params
from neuropredict.stream.rules import TickRules

log = logging.getLogger(__name__)
TICK = ["input_partition", "input_offset"]


def live_rows(params: Params, topics: Topics, bootstrap: str | None = None,
              since_ms: int | None = None) -> pd.DataFrame:
    """Every scored live forecast, production's and the shadows'."""
    rules = TickRules.from_params(params.validate, params.serving)
    return stream_report.joined_rows(rules, params.data.intraday, topics, bootstrap, since_ms, shadow=True)


def version_rows(rows: pd.DataFrame, version: str) -> pd.DataFrame:
    """A version's scored forecasts, once per tick (one it made as production and in shadow: production's)."""
    mine = rows[rows["model_version"] == str(version)]
    first = mine.assign(_shadow=mine["alias"] != PRODUCTION_ALIAS).sort_values("_shadow", kind="stable")
    return first.drop_duplicates(TICK).drop(columns="_shadow").sort_values(["symbol", "time"], ignore_index=True)


def version_figures(rows: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per symbol and pooled: what a worker reports live for a version (MSE, persistence MSE,
    skill, DM t against persistence, coverage and interval score per level)."""
    scores = score_rows(rows)
    spreads = stream_report.interval_scores(rows) or {}
    return {key: {**m, **spreads.get(key, {})} for key, m in scores.items()}


def compare(rows: pd.DataFrame, a: str, b: str) -> tuple[dict[str, Any], pd.DataFrame]:
    """A against B on the ticks both forecast, per symbol and pooled; and each on all its ticks."""
    ra, rb = version_rows(rows, a), version_rows(rows, b)
    if ra.empty or rb.empty:
        missing = " and ".join(f"v{v}" for v, r in ((a, ra), (b, rb)) if r.empty)
        raise NeuropredictError(f"no live forecast of {missing} could be scored yet: is it served or in "
                                f"serving.shadow_aliases, and has the stream reached two ticks per symbol?")
    paired = ra.merge(rb[TICK + ["predicted", *stream_report.bound_columns(rb)]], on=TICK, suffixes=("", "_b"))
    levels = stream_report.interval_levels(rows)
    by_symbol = {str(s): _pair_figures(g, levels) for s, g in paired.groupby("symbol", sort=True)}
    by_symbol["_pooled"] = _pair_figures(paired, levels)
    return {"a": str(a), "b": str(b), "levels": list(levels), "paired": by_symbol,
            "versions": {str(a): version_figures(ra)["_pooled"], str(b): version_figures(rb)["_pooled"]},
            "first_target": str(paired["time"].min()) if len(paired) else "",
            "last_target": str(paired["time"].max()) if len(paired) else ""}, paired


def _pair_figures(g: pd.DataFrame, levels: tuple[float, ...]) -> dict[str, float]:
    actual, last = g["actual"].to_numpy(float), g["persistence"].to_numpy(float)
    sq_a, sq_b = (g["predicted"].to_numpy(float) - actual) ** 2, (g["predicted_b"].to_numpy(float) - actual) ** 2
    sq_naive = (last - actual) ** 2
    n = len(g)
    out = {"n": float(n), "mse_a": _mean(sq_a), "mse_b": _mean(sq_b), "persistence_mse": _mean(sq_naive)}
    out.update(skill_a=skill(out["mse_a"], out["persistence_mse"]), skill_b=skill(out["mse_b"], out["persistence_mse"]),
               dm_t=dm_test(sq_b - sq_a)["dm_t"] if n else 0.0)
    for level in levels:
        tag = intervals.label(level)
        for side, suffix in (("a", ""), ("b", "_b")):
            lower = g.get(intervals.column("model", "lower", level) + suffix)
            upper = g.get(intervals.column("model", "upper", level) + suffix)
            if lower is None or upper is None or lower.isna().all():
                continue
            lo, hi = lower.to_numpy(float), upper.to_numpy(float)
            out[f"coverage_{side}_{tag}"] = 100 * _mean((actual >= lo) & (actual <= hi))
            out[f"interval_score_{side}_{tag}"] = _mean(100 * intervals.interval_score(actual, lo, hi, level) / last)
    return out


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def since_ms(text: str | None) -> int | None:
    """'2h', '30m', '3d' (ago) or an ISO time ('2026-12-07 09:30', UTC if no zone) -> epoch ms."""
    if not text:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return int((time.time() - float(text[:-1]) * units[text[-1]]) * 1000)
    moment = pd.Timestamp(text)
    moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment
    return int(moment.timestamp() * 1000)


def format_comparison(result: dict[str, Any]) -> str:
    a, b, levels = result["a"], result["b"], result["levels"]
    head = (f"{'symbol':<8}{'n':>6}{'MSE v' + a:>13}{'MSE v' + b:>13}{'persist.':>12}{'skill A %':>10}"
            f"{'skill B %':>10}{'DM t B-A':>10}")
    cov = "".join(f"{f'cov{intervals.label(p)} A/B':>16}{f'IS{intervals.label(p)} A/B':>16}" for p in levels)
    lines = [f"v{a} (A) against v{b} (B) on the same live ticks ({result['first_target'][:16]} .. "
             f"{result['last_target'][:16]}); DM t > 0: B is worse", head + cov, "-" * len(head + cov)]
    for key, m in result["paired"].items():
        line = (f"{'ALL' if key == '_pooled' else key:<8}{int(m['n']):>6}{m['mse_a']:>13.4f}{m['mse_b']:>13.4f}"
                f"{m['persistence_mse']:>12.4f}{100 * m['skill_a']:>+10.2f}{100 * m['skill_b']:>+10.2f}"
                f"{m['dm_t']:>+10.2f}")
        for p in levels:
            t = intervals.label(p)
            line += "".join(f"{_pair(m, what, t):>16}" for what, _ in (("coverage", 1), ("interval_score", 3)))
        lines.append(line)
    return "\n".join(lines)


def _pair(m: dict, what: str, tag: str) -> str:
    a, b = m.get(f"{what}_a_{tag}"), m.get(f"{what}_b_{tag}")
    fmt = ".1f" if what == "coverage" else ".3f"
    return f"{_fmt(a, fmt)}/{_fmt(b, fmt)}"


def _fmt(value, fmt: str) -> str:
    return "-" if value is None or value != value else format(value, fmt)


def report(result: dict[str, Any], paired: pd.DataFrame, out_dir: Path, log_to_mlflow: bool = True) -> Path:
    """compare.json and the chart; both in a `compare` run of the serving experiment."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "compare.json", result)
    chart = plots.loss_differential(paired, result["a"], result["b"], out_dir / "compare.png",
                                    f"v{result['b']} against v{result['a']} on the same live ticks")
    if log_to_mlflow:
        _log(result, out_dir)
    return chart


def _log(result: dict[str, Any], out_dir: Path) -> None:
    metrics = {k if key == "_pooled" else f"{key}_{k}": v for key, m in result["paired"].items() for k, v in m.items()}
    stream_report.log_report_run("compare", f"compare v{result['a']} v{result['b']}",
                                 {"version_a": result["a"], "version_b": result["b"]}, metrics, out_dir)
