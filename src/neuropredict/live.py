"""Live metrics of a serving worker, and their trip to MLflow without ever blocking scoring.

Each prediction is scored when the symbol's next price arrives, beside persistence (the previous
price) on exactly the same ticks. Aggregates go to an MLflow run of the worker's own at an
interval (not per tick), from a background thread that buffers while MLflow is unreachable.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from neuropredict import config, tracking
from neuropredict.evaluation import skill

log = logging.getLogger(__name__)


@dataclass
class ErrorSums:
    """Running sums for MSE of the model and of persistence on the same ticks."""

    n: int = 0
    model_sq: float = 0.0
    naive_sq: float = 0.0

    def add(self, model_err: np.ndarray, naive_err: np.ndarray) -> None:
        self.n += len(model_err)
        self.model_sq += float(np.dot(model_err, model_err))
        self.naive_sq += float(np.dot(naive_err, naive_err))

    def figures(self) -> dict[str, float]:
        if self.n == 0:
            return {}
        mse, naive = self.model_sq / self.n, self.naive_sq / self.n
        return {"mse": mse, "naive_mse": naive, "skill": skill(mse, naive), "scored": float(self.n)}


@dataclass
class LiveStats:
    """Everything a worker counts. Every input is exactly one of: predicted, dead-lettered, warm-up."""

    consumed: int = 0
    predicted: int = 0
    dead_lettered: int = 0
    warmup: int = 0
    batches: int = 0
    swaps: int = 0
    busy_s: float = 0.0  # time spent processing batches (throughput while there was work)
    cadence_mismatches: int = 0  # ticks closer together than the model's interval
    overall: ErrorSums = field(default_factory=ErrorSums)
    by_symbol: dict[str, ErrorSums] = field(default_factory=dict)
    by_version: dict[str, ErrorSums] = field(default_factory=dict)
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=50_000))
    started: float = field(default_factory=time.monotonic)
    seconds: dict[str, float] = field(default_factory=dict)  # where the time goes, per step of the loop
    first_data_at: float = 0.0  # perf_counter when the first batch arrived ...
    last_commit_at: float = 0.0  # ... and when the latest one was committed (end-to-end throughput)

    def add_seconds(self, step: str, seconds: float) -> None:
        self.seconds[step] = self.seconds.get(step, 0.0) + seconds

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add_seconds(step, time.perf_counter() - began)

    def score(self, symbol: str, version: str, model_err: np.ndarray, naive_err: np.ndarray) -> None:
        if len(model_err) == 0:
            return
        self.overall.add(model_err, naive_err)
        self.by_symbol.setdefault(symbol, ErrorSums()).add(model_err, naive_err)
        self.by_version.setdefault(version, ErrorSums()).add(model_err, naive_err)

    def snapshot(self) -> dict[str, float]:
        """Flat metrics for MLflow: live_mse beside live_naive_mse, counts, throughput, latency."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        out = {"consumed": self.consumed, "predicted": self.predicted, "dlq_count": self.dead_lettered,
               "warmup_count": self.warmup, "model_swaps": self.swaps,
               "cadence_mismatch_count": self.cadence_mismatches,
               "throughput_ticks_per_s": self.consumed / elapsed,
               "busy_throughput_ticks_per_s": self.consumed / self.busy_s if self.busy_s else 0.0}
        for key, value in self.overall.figures().items():
            out[f"live_{key}"] = value
        for symbol, sums in self.by_symbol.items():
            for key, value in sums.figures().items():
                if key != "scored":
                    out[f"live_{key}_{symbol}"] = value
        out.update({f"seconds_{step}": value for step, value in self.seconds.items()})  # where the time goes
        out["batches"] = self.batches
        if self.latencies_ms:
            lat = np.fromiter(self.latencies_ms, np.float64)
            out.update({f"latency_ms_p{q}": float(np.percentile(lat, q)) for q in (50, 95, 99)})
        return {k: float(v) for k, v in out.items()}


class MlflowReporter:
    """A background thread that logs snapshots to the worker's MLflow run, retrying on outages."""

    def __init__(self, model_name: str, group: str, interval_s: float):
        self.model_name, self.group, self.interval_s = model_name, group, interval_s
        self.run_id: str | None = None
        self.model_id: str | None = None
        self.version: str | None = None
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mlflow-reporter", daemon=True)
        self._step = 0
        self._last_put = 0.0

    def start(self) -> None:
        self._thread.start()

    def due(self) -> bool:
        return time.monotonic() - self._last_put >= self.interval_s

    def report(self, snapshot: dict[str, float], version: str, model_id: str | None) -> None:
        """Queue a snapshot (cheap: the hot path never waits for MLflow)."""
        self._last_put = time.monotonic()
        self._queue.put((snapshot, version, model_id))

    def close(self, timeout_s: float = 15.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _loop(self) -> None:
        pending = None
        backoff = 1.0
        while True:
            try:
                pending = self._queue.get(timeout=0.2)
                while not self._queue.empty():  # only the newest snapshot matters: they are cumulative
                    pending = self._queue.get_nowait()
            except queue.Empty:
                if self._stop.is_set() and pending is None:
                    return
            if pending is None:
                continue
            try:
                self._log(*pending)
                pending, backoff = None, 1.0
            except Exception as exc:  # MLflow down: keep the snapshot, never stop scoring
                log.warning("MLflow unreachable (%s: %s); live metrics buffered, retry in %.0f s",
                            type(exc).__name__, str(exc)[:120], backoff)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, 30.0)

    def _ensure_run(self) -> str:
        if self.run_id is None:
            from mlflow.tracking import MlflowClient

            exp_id = tracking.setup(config.SERVING_EXPERIMENT_NAME)
            run = MlflowClient().create_run(exp_id, run_name=f"serve-{socket.gethostname()}-{os.getpid()}", tags={
                "neuropredict.stage": "serve", "model_name": self.model_name, "consumer_group": self.group,
                "kafka_bootstrap": config.kafka_bootstrap()})
            self.run_id = run.info.run_id
            log.info("live metrics -> MLflow run %s (experiment %s)", self.run_id, config.SERVING_EXPERIMENT_NAME)
        return self.run_id

    def _log(self, snapshot: dict[str, float], version: str, model_id: str | None) -> None:
        from mlflow.entities import Metric, RunTag
        from mlflow.tracking import MlflowClient

        run_id = self._ensure_run()
        client = MlflowClient()
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, self._step, model_id=model_id) for k, v in snapshot.items()
                   if np.isfinite(v)]
        tags = [RunTag("model_version", version), RunTag(f"served_version_{version}", "true")]
        tracking.with_retry(lambda: client.log_batch(run_id, metrics=metrics, tags=tags))
        self._step += 1

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id is None:
            return
        from mlflow.tracking import MlflowClient

        try:
            tracking.with_retry(lambda: MlflowClient().set_terminated(self.run_id, status))
        except Exception as exc:
            log.warning("could not close the MLflow run %s: %s", self.run_id, exc)
