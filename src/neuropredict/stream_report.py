"""`neuropredict evaluate`: join each streamed prediction with the symbol's next actual price.

The join goes back to `stock_prices` itself: the forecast made at input (partition, offset) is
scored against the next tick of the same symbol in that partition that the worker accepted (the
same data-quality rules, replayed in the same order), beside persistence on exactly the same
rows, per symbol and per model version. At-least-once duplicates (the same input scored twice
after a crash) are counted once.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neuropredict import backtests, intervals, messages, plots
from neuropredict.errors import NeuropredictError
from neuropredict.evaluation import flat_metrics, format_table, score_rows
from neuropredict.features import session_ids
from neuropredict.files import write_json
from neuropredict.kafka_io import TopicReader
from neuropredict.settings import contracts
from neuropredict.settings.contracts import PRODUCTION_ALIAS, Topics
from neuropredict.stream.rules import Guard, TickRules
from neuropredict.stream.state import screen

log = logging.getLogger(__name__)


_BOUND = re.compile(r"(lower|upper)_\d+(\.\d+)?")
PREDICTION_FIELDS = ("symbol", "actual_price", "predicted_price", "model_version", "input_partition",
                     "input_offset")
TICK_COLUMNS = ["partition", "offset", "symbol", "timestamp", "price"]


def joined_rows(rules: TickRules, intraday: bool, topics: Topics, bootstrap: str | None = None,
                since_ms: int | None = None, shadow: bool = False) -> pd.DataFrame:
    """One row per scored forecast: symbol, target time, actual, predicted, persistence, version,
    alias. With shadow: the shadow versions' forecasts too (alias: theirs; production's: production)."""
    with TopicReader(bootstrap) as reader:
        inputs = reader.read_all([topics.prices])
        outputs = reader.read_all(_output_topics(topics, shadow))
    return rows_from_records(inputs, outputs, rules, intraday, topics, since_ms)


def joined_tail(rules: TickRules, intraday: bool, topics: Topics, last: int, bootstrap: str | None = None,
                since_ms: int | None = None, shadow: bool = False) -> pd.DataFrame:
    """As joined_rows, for the newest `last` forecasts of each output partition only: the inputs
    are read from a little before the first tick they forecast (room for the rules to settle)."""
    inputs, outputs = read_tail(rules, topics, last, bootstrap, shadow)
    return rows_from_records(inputs, outputs, rules, intraday, topics, since_ms)


def read_tail(rules: TickRules, topics: Topics, last: int, bootstrap: str | None = None,
              shadow: bool = False) -> tuple[list, list]:
    """The newest `last` output records of each partition, and the input records they forecast
    from (from a little before the first)."""
    with TopicReader(bootstrap) as reader:
        parts = reader.partitions(_output_topics(topics, shadow))
        ends = reader.high_watermarks(parts)
        outputs = [r for batch in reader.read({tp: max(0, ends.get(tp, 0) - last) for tp in parts}, ends, 60.0)
                   for r in batch]
        first: dict[int, int] = {}
        for pred in predictions(outputs, topics):
            p, o = int(pred["input_partition"]), int(pred["input_offset"])
            first[p] = min(first.get(p, o), o)
        margin = 4 * rules.level_shift_ticks + 64
        starts = {tp: max(0, first[tp.partition] - margin) for tp in reader.partitions([topics.prices])
                  if tp.partition in first}
        inputs = [r for batch in reader.read(starts, {}, 60.0) for r in batch] if starts else []
    return inputs, outputs


def _output_topics(topics: Topics, shadow: bool) -> list[str]:
    return [topics.predictions, topics.shadow_predictions] if shadow else [topics.predictions]


def rows_from_records(inputs: list, outputs: list, rules: TickRules, intraday: bool, topics: Topics,
                      since_ms: int | None = None) -> pd.DataFrame:
    """Input records + output records (those since since_ms) -> one row per scored forecast."""
    if since_ms is not None:
        inputs = [r for r in inputs if r.timestamp >= since_ms]
        outputs = [r for r in outputs if r.timestamp >= since_ms]
    ticks = []
    for r in inputs:
        tick = messages.parse_tick(r.value)
        if not isinstance(tick, str) and r.key == tick.symbol.encode():  # what the worker scores
            ticks.append((r.partition, r.offset, tick.symbol, tick.timestamp, tick.price))
    return join(pd.DataFrame(ticks, columns=TICK_COLUMNS), predictions(outputs, topics), intraday, rules)


def predictions(outputs: list, topics: Topics) -> list[dict]:
    """The prediction messages among output records (others are counted and left out)."""
    preds, foreign = [], 0
    for r in outputs:
        try:
            pred = messages.decode(r.value)
        except ValueError:
            pred = None
        if isinstance(pred, dict) and all(k in pred for k in PREDICTION_FIELDS):
            preds.append(pred)
        else:
            foreign += 1
    if foreign:
        log.warning("skipped %d records of %s that are not predictions of this product", foreign, topics.predictions)
    return preds


def screened(ticks: pd.DataFrame, intraday: bool, rules: TickRules | None) -> pd.DataFrame:
    """The ticks the worker accepted, each with its segment (session, level): the same rules,
    in the same order (each symbol's partition, by offset). Without rules: every tick."""
    ticks = ticks.sort_values(["partition", "symbol", "offset"], ignore_index=True)
    times = np.array([messages.clock_seconds(t) for t in ticks["timestamp"]], dtype=np.float64)
    keep = np.zeros(len(ticks), dtype=bool)
    sessions = session_ids(times, intraday)
    levels = np.zeros(len(ticks), dtype=np.int64)
    for (_, symbol), group in ticks.groupby(["partition", "symbol"], sort=False):
        idx = group.index.to_numpy()
        if rules is None:
            keep[idx] = True
            continue
        s = screen(Guard(), symbol, times[idx], group["price"].to_numpy(float), group["timestamp"].tolist(),
                   rules, intraday)
        keep[idx[s.accepted]] = True
        levels[idx[s.accepted]] = s.levels
    return ticks.assign(session=sessions, level=levels)[keep]


def join(ticks: pd.DataFrame, preds: list[dict], intraday: bool = False,
         rules: TickRules | None = None) -> pd.DataFrame:
    """Pure: inputs (partition, offset, symbol, timestamp, price) + prediction dicts -> scored rows.
    A forecast meets its symbol's next accepted tick when both lie in one segment: never across
    an intraday session (as neither training nor the worker does) nor across a new price level."""
    if ticks.empty or not preds:
        return pd.DataFrame(columns=["symbol", "time", "actual", "predicted", "persistence", "model_version", "alias",
                                     "input_partition", "input_offset"])
    ticks = accepted = screened(ticks, intraday, rules)
    nxt = ticks.groupby(["partition", "symbol"], sort=False)[["timestamp", "price", "session", "level"]].shift(-1)
    same = (nxt["session"] == ticks["session"]) & (nxt["level"] == ticks["level"])
    ticks = ticks.assign(next_time=nxt["timestamp"], next_price=nxt["price"])[same]
    forecasts = _once_each(pd.DataFrame(preds))
    unmatched = forecasts.merge(accepted[["partition", "offset"]], left_on=["input_partition", "input_offset"],
                                right_on=["partition", "offset"], how="left", indicator=True)["_merge"] == "left_only"
    if unmatched.any():  # the worker forecast at a tick the rules here reject: they disagree
        log.warning("%d forecasts were made at ticks that evaluate's replay of the rules rejects (or that "
                    "are not in the input topic any more); they are not scored", int(unmatched.sum()))
    rows = forecasts.merge(ticks, left_on=["input_partition", "input_offset", "symbol"],
                           right_on=["partition", "offset", "symbol"], how="inner", suffixes=("_prediction", ""))
    return pd.DataFrame({
        "symbol": rows["symbol"].to_numpy(),
        "time": pd.to_datetime(rows["next_time"]).to_numpy(),
        "actual": rows["next_price"].to_numpy(float),
        "predicted": rows["predicted_price"].to_numpy(float),
        "persistence": rows["actual_price"].to_numpy(float),
        "model_version": rows["model_version"].astype(str).to_numpy(),
        "alias": rows["alias"].to_numpy(),
        "input_partition": rows["input_partition"].to_numpy(np.int64),
        "input_offset": rows["input_offset"].to_numpy(np.int64),
        **{c: rows[c].to_numpy(float) for c in bound_columns(rows)},
    }).sort_values(["symbol", "time"], ignore_index=True)


def _once_each(forecasts: pd.DataFrame) -> pd.DataFrame:
    """Each input forecast once (an at-least-once repeat is dropped): production's once per tick,
    whichever version made it; a shadow's once per tick and version."""
    alias = forecasts["alias"].fillna(PRODUCTION_ALIAS) if "alias" in forecasts else PRODUCTION_ALIAS
    forecasts = forecasts.assign(alias=alias)
    shadow_version = forecasts["model_version"].astype(str).where(forecasts["alias"] != PRODUCTION_ALIAS, "")
    return (forecasts.assign(_shadow=shadow_version)
            .drop_duplicates(["alias", "_shadow", "input_partition", "input_offset"]).drop(columns="_shadow"))


def bound_columns(frame: pd.DataFrame) -> list[str]:
    """The model's interval bounds among the columns (lower_80, upper_80, ...)."""
    return [c for c in frame.columns if _BOUND.fullmatch(str(c))]


def interval_levels(frame: pd.DataFrame) -> tuple[float, ...]:
    """The levels whose lower and upper bounds are both columns: lower_80 + upper_80 -> 0.8."""
    labels = {c.split("_", 1)[1] for c in bound_columns(frame)}
    return tuple(sorted(float(t) / 100 for t in labels if f"lower_{t}" in frame and f"upper_{t}" in frame))


def interval_scores(rows: pd.DataFrame) -> dict[str, dict[str, float]] | None:
    """Coverage, width and interval score of the streamed intervals, on the rows that carry them
    (a version without intervals carries none); None when no row does."""
    levels = interval_levels(rows)
    if not levels:
        return None
    carried = _carried(rows, levels)
    return intervals.score(carried, levels) if len(carried) else None


def conditional_coverage(rows: pd.DataFrame) -> dict[str, dict] | None:
    """The streamed intervals by volatility regime and the backtests (backtests.conditional)."""
    levels = interval_levels(rows)
    carried = _carried(rows, levels) if levels else rows.iloc[:0]
    return backtests.conditional(carried, levels) if len(carried) else None


def _carried(rows: pd.DataFrame, levels: tuple[float, ...]) -> pd.DataFrame:
    return rows.dropna(subset=[intervals.column("model", side, p) for p in levels for side in ("lower", "upper")])


def in_period(rows: pd.DataFrame, start: str | None, end: str | None) -> pd.DataFrame:
    keep = np.ones(len(rows), dtype=bool)
    if start:
        keep &= rows["time"] >= pd.Timestamp(start)
    if end:
        keep &= rows["time"] < pd.Timestamp(end) + pd.Timedelta(days=1)
    return rows.loc[keep].reset_index(drop=True)


def report(rows: pd.DataFrame, out_dir: Path, log_to_mlflow: bool = True) -> dict[str, Any]:
    """Scores overall and per version; writes report.json, predicted_vs_actual.png; logs to MLflow."""
    if rows.empty:
        raise NeuropredictError("no prediction could be joined with a later price: is the worker running, "
                         "and did the stream reach at least two ticks per symbol?")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "rows": len(rows), "first_target": str(rows["time"].min()), "last_target": str(rows["time"].max()),
        "scores": score_rows(rows),
        "by_version": {v: score_rows(g)["_pooled"] for v, g in rows.groupby("model_version")},
        "interval_levels": list(interval_levels(rows)),
        "intervals": interval_scores(rows),
        "intervals_conditional": conditional_coverage(rows),
    }
    write_json(out_dir / "report.json", result)
    rows.to_csv(out_dir / "rows.csv", index=False)
    plots.predicted_vs_actual(rows, out_dir / "predicted_vs_actual.png",
                              "Streamed forecasts vs actual (last 60 ticks per symbol)")
    if log_to_mlflow:
        _log(result, out_dir)
    return result


def _log(result: dict[str, Any], out_dir: Path) -> None:
    flat = {**flat_metrics(result["scores"], "stream"), **flat_metrics(result["intervals"] or {}, "stream"),
            **backtests.flat_metrics(result["intervals_conditional"] or {}, "stream")}
    log_report_run("evaluate", "evaluate", {}, flat, out_dir)


def log_report_run(stage: str, run_name: str, tags: dict[str, str], metrics: dict[str, float], out_dir: Path) -> None:
    """A run of the serving experiment with a report's figures and files (`evaluate`, `compare`);
    each write retried while SQLite is locked. The report files exist either way."""
    from mlflow.entities import Metric

    from neuropredict import tracking

    try:
        exp_id = tracking.setup(contracts.SERVING_EXPERIMENT_NAME)
        client = tracking.client()
        run_id = tracking.with_retry(lambda: client.create_run(
            exp_id, run_name=run_name, tags={tracking.STAGE_TAG: stage, **tags})).info.run_id
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v == v]  # NaN: no figure
        tracking.with_retry(lambda: client.log_batch(run_id, metrics=batch))
        client.log_artifacts(run_id, str(out_dir), stage)
        tracking.with_retry(lambda: client.set_terminated(run_id))
    except Exception as exc:
        log.warning("could not log the %s report to MLflow: %s", stage, exc)


def format_report(result: dict[str, Any]) -> str:
    lines = [format_table(result["scores"], f"Streamed forecasts scored against the next actual price "
                                            f"({result['first_target'][:10]} .. {result['last_target'][:10]})")]
    lines.append("by model version:")
    for version, m in result["by_version"].items():
        lines.append(f"  v{version}: {int(m['n'])} forecasts, MSE {m['mse']:.4f} vs persistence "
                     f"{m['persistence_mse']:.4f} (skill {100 * m['skill']:+.2f} %)")
    if result.get("intervals"):
        lines.append(intervals.format_table(result["intervals"], result["interval_levels"],
                                            "Streamed prediction intervals (coverage: share of next prices inside)"))
    if result.get("intervals_conditional"):
        lines.append(backtests.format_conditional(result["intervals_conditional"], "Streamed intervals by volatility "
                                                  "regime, after jumps, and the backtests' p-values"))
    return "\n".join(lines)
