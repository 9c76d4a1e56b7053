"""The alias watch: a background thread polls an alias (`production`, or a shadow's); when it moves,
it loads and warms the new version off the hot path, and the worker takes it between two batches.
A version that cannot be loaded is reported once and tried again with backoff; the model in use
(if any) keeps serving meanwhile."""

from __future__ import annotations

import logging
import threading

from neuropredict import registry, retry

log = logging.getLogger(__name__)


class ModelWatcher:
    """Polls name@alias every interval_s; `take()` hands over a newly promoted, warmed-up model."""

    def __init__(self, name: str, alias: str, serving: registry.ServedModel | None, interval_s: float):
        self.name, self.alias, self.interval_s = name, alias, interval_s
        self._seen = self._serving = serving.version if serving else None
        self._failed: set[str] = set()  # versions whose load failure was reported
        self._ready: registry.ServedModel | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="model-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def ready(self) -> bool:
        """Whether a new model waits to be taken."""
        with self._lock:
            return self._ready is not None

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
            version = None
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
            except Exception as exc:  # registry down, or a version that cannot load: keep the current model
                self._report(version, exc)
                wait_s = failures.next()
            if self._stop.wait(wait_s):
                return

    def _report(self, version: str | None, exc: Exception) -> None:
        what = f"{type(exc).__name__}: {str(exc)[:160]}"
        serving = f"serving v{self._serving}" if self._serving else "nothing served from it meanwhile"
        if version is None or version == self._seen:
            log.warning("cannot check %s@%s (%s); %s, retrying", self.name, self.alias, what, serving)
        elif version not in self._failed:
            self._failed.add(version)
            log.error("%s@%s: version %s cannot be loaded (%s); %s, retrying with backoff", self.name, self.alias,
                      version, what, serving)
