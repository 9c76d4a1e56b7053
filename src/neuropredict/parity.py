"""Train/serve parity: the held-out test period through Kafka and a worker must give the same
forecasts as the offline test evaluation of the same model version.

It runs on a private broker (free ports, its own topics: the embedded Tansu, or Apache Kafka with
the worker's exactly-once transactions), so it never mixes with a running stream, and it pins the
model version so a promotion mid-check cannot confuse it.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from neuropredict import brokers, producer, registry, retry, stream_report
from neuropredict.errors import NeuropredictError
from neuropredict.features import load_price_series, series_splits
from neuropredict.forecaster import served_period
from neuropredict.settings.contracts import Topics
from neuropredict.settings.paths import Paths
from neuropredict.settings.schema import Params
from neuropredict.stream.worker import Worker

log = logging.getLogger(__name__)

MAX_REL_DIFF = 1e-4  # of the price
MAX_MSE_REL_DIFF = 1e-3  # 0.1 %


def check(params: Params, project: Paths, version: str | None = None, broker: str = "tansu") -> dict[str, Any]:
    """Offline forecasts vs streamed forecasts of one version on the test period; PASS/FAIL."""
    name = params.register.model_name
    version = version or registry.alias_version(name)
    if version is None:
        raise NeuropredictError(f"no {name}@production to check: run `dvc repro` first")
    loaded = registry.load(name, version=version)
    series = load_price_series(project.raw_dir, params.data.symbols, params.data.interval, params.featurize.price_column)
    periods = series_splits(series, params.featurize)
    start, end = periods.test_start, periods.end
    offline = served_period(loaded.forecaster, series, start, end)
    online = stream_report.in_period(_stream(params, project, version, loaded.forecaster, broker), start, end)
    if params.data.interval == "1d":  # a replayed daily close is stamped 16:00; offline rows are dates
        online = online.assign(time=online["time"].dt.normalize())
    return {**compare(offline, online, version), "broker": broker}


def _stream(params: Params, project: Paths, version: str, forecaster, kind: str):
    ticks, _ = producer.replay_period(params, project, forecaster.window)
    topics = Topics()
    with tempfile.TemporaryDirectory(prefix="neuropredict-parity-") as tmp:
        broker = brokers.start_scratch_broker(kind, Path(tmp), params.kafka, topics=topics)
        try:
            worker = Worker(params, bootstrap=broker.bootstrap, topics=topics, report_to_mlflow=False,
                            pinned_version=version)
            worker.start()
            thread = threading.Thread(target=worker.run, daemon=True)
            thread.start()
            producer.publish(ticks, topics.prices, bootstrap=broker.bootstrap, serving=params.serving)
            try:
                retry.wait_until(lambda: worker.stats.consumed >= len(ticks) or not thread.is_alive(), 300,
                                 "the worker to score the test period", every_s=0.1)
            finally:
                worker.stop_event.set()
                thread.join(60)
            return stream_report.joined_rows(worker.rules, forecaster.intraday, topics, broker.bootstrap)
        finally:
            broker.stop()


def compare(offline, online, version: str) -> dict[str, Any]:
    merged = offline.merge(online, on=["symbol", "time"], how="outer", suffixes=("_offline", "_online"),
                           indicator=True)
    both = merged[merged["_merge"] == "both"]
    diff = np.abs(both["predicted_online"] - both["predicted_offline"]) / both["actual_offline"]
    bounds = [c for c in stream_report.bound_columns(offline) if c in online]
    bound_diff = [np.abs(both[f"{c}_online"] - both[f"{c}_offline"]) / both["actual_offline"] for c in bounds]
    mse_off = float(np.mean((offline["predicted"] - offline["actual"]) ** 2))
    mse_on = float(np.mean((online["predicted"] - online["actual"]) ** 2)) if len(online) else float("nan")
    result = {
        "version": version, "offline_rows": len(offline), "online_rows": len(online), "matched_rows": len(both),
        "max_rel_diff": float(diff.max()) if len(both) else float("nan"),
        "bounds": bounds,  # interval bounds compared like the forecasts (none: a model without intervals)
        "max_bound_rel_diff": float(max(d.max() for d in bound_diff)) if bounds and len(both) else float("nan"),
        "offline_mse": mse_off, "online_mse": mse_on,
        "mse_rel_diff": abs(mse_on - mse_off) / mse_off if mse_off else float("nan"),
        "tolerance": {"max_rel_diff": MAX_REL_DIFF, "mse_rel_diff": MAX_MSE_REL_DIFF},
    }
    missing = [c for c in stream_report.bound_columns(offline) if c not in online]
    unbounded = sum(int(both[f"{c}_online"].isna().sum()) for c in bounds)  # streamed without its interval
    result["rows_without_bounds"] = unbounded
    result["passed"] = bool(
        len(both) == len(offline) == len(online) and not missing and not unbounded
        and result["max_rel_diff"] <= MAX_REL_DIFF and result["mse_rel_diff"] <= MAX_MSE_REL_DIFF
        and (not bounds or result["max_bound_rel_diff"] <= MAX_REL_DIFF))
    return result


def format_result(r: dict[str, Any]) -> str:
    verdict = "PASS" if r["passed"] else "FAIL"
    lines = [f"parity {verdict}: version {r['version']}, {r['matched_rows']} of {r['offline_rows']} offline test "
             f"forecasts matched by the stream ({r['online_rows']} streamed)",
             f"  max |online - offline| / price = {r['max_rel_diff']:.2e} (limit {MAX_REL_DIFF:.0e})"]
    if r["bounds"]:
        lines.append(f"  interval bounds ({', '.join(r['bounds'])}): max |online - offline| / price = "
                     f"{r['max_bound_rel_diff']:.2e} (limit {MAX_REL_DIFF:.0e})")
    lines.append(f"  MSE offline {r['offline_mse']:.6f}, online {r['online_mse']:.6f}, relative difference "
                 f"{r['mse_rel_diff']:.2e} (limit {MAX_MSE_REL_DIFF:.0e})")
    return "\n".join(lines)
