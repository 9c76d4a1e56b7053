"""Live metrics on their way to MLflow: a background thread logs the worker's cumulative
snapshot to a run of its own at an interval (not per tick), and buffers while MLflow is away,
so scoring never waits for it."""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time

import numpy as np

from neuropredict import retry, tracking
from neuropredict.settings import contracts, environment

log = logging.getLogger(__name__)


class MlflowReporter:
    """A background thread that logs snapshots to the worker's MLflow run, retrying on outages."""

    def __init__(self, model_name: str, group: str, interval_s: float):
        self.model_name, self.group, self.interval_s = model_name, group, interval_s
        self.run_id: str | None = None
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mlflow-reporter", daemon=True)
        self._step = 0
        self._last_put = 0.0
        self._link = True  # metrics linked to the served logged model (model_id), where the user may

    def start(self) -> None:
        self._thread.start()

    def due(self) -> bool:
        return time.monotonic() - self._last_put >= self.interval_s

    def report(self, snapshot: dict[str, float], version: str, model_id: str | None,
               served: dict[str, str] | None = None, final: bool = False) -> None:
        """Queue a snapshot (cheap: the hot path never waits for MLflow). `served`: alias -> version.
        The final one is logged before the run ends (close)."""
        self._last_put = time.monotonic()
        self._queue.put((snapshot, version, model_id, served or {}))
        if final:
            self.close()

    def close(self, timeout_s: float = 15.0) -> None:
        """Log what is queued (waiting at most timeout_s), then end the run."""
        self._stop.set()
        self._thread.join(timeout_s)
        self.finish()

    def _loop(self) -> None:
        pending = None
        failures = retry.Backoff(1.0, 30.0)
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
                pending = None
                failures.reset()
            except Exception as exc:  # MLflow down: keep the snapshot, never stop scoring
                log.warning("MLflow unreachable (%s: %s); live metrics buffered, retry in %.0f s",
                            type(exc).__name__, str(exc)[:120], failures.delay_s)
                if failures.wait(self._stop):
                    return

    def _ensure_run(self) -> str:
        if self.run_id is None:
            from mlflow.tracking import MlflowClient

            exp_id = tracking.setup(contracts.SERVING_EXPERIMENT_NAME)
            run = MlflowClient().create_run(exp_id, run_name=f"serve-{socket.gethostname()}-{os.getpid()}", tags={
                tracking.STAGE_TAG: "serve", "model_name": self.model_name, "consumer_group": self.group,
                "kafka_bootstrap": environment.kafka_bootstrap()})
            self.run_id = run.info.run_id
            log.info("live metrics -> MLflow run %s (experiment %s)", self.run_id, contracts.SERVING_EXPERIMENT_NAME)
        return self.run_id

    def _log(self, snapshot: dict[str, float], version: str, model_id: str | None, served: dict[str, str]) -> None:
        from mlflow.entities import Metric, RunTag
        from mlflow.tracking import MlflowClient

        run_id = self._ensure_run()
        client = MlflowClient()
        now = int(time.time() * 1000)
        tags = [RunTag("model_version", version), RunTag(f"served_version_{version}", "true"),
                *(RunTag(f"alias_{alias}", v) for alias, v in served.items())]

        def send(link: str | None) -> None:
            metrics = [Metric(k, v, now, self._step, model_id=link) for k, v in snapshot.items() if np.isfinite(v)]
            tracking.with_retry(lambda: client.log_batch(run_id, metrics=metrics, tags=tags))

        try:
            send(model_id if self._link else None)
        except Exception as exc:
            if not (self._link and model_id and "PERMISSION_DENIED" in str(exc) + getattr(exc, "error_code", "")):
                raise
            # linking metrics to the logged model writes to the model (in the training experiment): a
            # worker logged in as its own user may write its runs only, so its metrics stay on its run
            log.info("live metrics are not linked to the logged model (this MLflow user may write its runs only)")
            self._link = False
            send(None)
        self._step += 1

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id is None:
            return
        from mlflow.tracking import MlflowClient

        log.info("live metrics: %d snapshots logged to MLflow run %s", self._step, self.run_id)
        try:
            tracking.with_retry(lambda: MlflowClient().set_terminated(self.run_id, status))
        except Exception as exc:
            log.warning("could not close the MLflow run %s: %s", self.run_id, exc)
