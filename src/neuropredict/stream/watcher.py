"""The alias watch: a background thread polls `production`; when it moves, it loads and warms the
new version off the hot path, and the worker takes it between two batches."""

from __future__ import annotations

import logging
import threading

from neuropredict import registry, retry

log = logging.getLogger(__name__)


class ModelWatcher:
    """Polls name@alias every interval_s; `take()` hands over a newly promoted, warmed-up model."""

    def __init__(self, name: str, alias: str, serving: registry.ServedModel, interval_s: float):
        self.name, self.alias, self.interval_s = name, alias, interval_s
        self._seen, self._serving = serving.version, serving.version
        self._ready: registry.ServedModel | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="model-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def take(self) -> registry.ServedModel | None:
        with self._lock:
            ready, self._ready = self._ready, None
        if ready is not None:
            self._serving = ready.version
        return ready

    def _loop(self) -> None:
        """Check at once (the first registry call of a process is the slow one: better before
        traffic than in the middle of a batch), then every interval_s; back off while MLflow is away."""
        failures = retry.Backoff(2 * self.interval_s, 60.0)
        while True:
            try:
                version = registry.alias_version(self.name, self.alias)
                if version and version != self._seen:
                    served = registry.load(self.name, version=version)
                    served.forecaster.warm_up()
                    with self._lock:
                        self._ready = served
                    self._seen = version
                failures.reset()
                wait_s = self.interval_s
            except Exception as exc:  # registry down: keep serving the current model
                log.warning("cannot check %s@%s (%s: %s); serving v%s, retrying", self.name, self.alias,
                            type(exc).__name__, str(exc)[:120], self._serving)
                wait_s = failures.next()
            if self._stop.wait(wait_s):
                return
