"""A worker's Prometheus endpoint: what it has done and how well its forecasts do, read from its
own counts (stats.LiveStats) when Prometheus scrapes, so the loop pays nothing per scrape and
the figures are the ones the worker logs and sends to MLflow.

Names follow Prometheus' conventions: a `neuropredict_` prefix, counters end in `_total`, base
units (seconds, ratios), and bounded label sets: outcome, reason, partition, alias, version,
method, level; never a tick, a symbol's price or an offset. Rolling figures (`neuropredict_live_*`)
cover the newest stats.LIVE_WINDOW_TICKS scored ticks of each served version; PromQL takes rates
of the counters over any window it likes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from neuropredict import intervals
from neuropredict.errors import ServiceError
from neuropredict.settings import environment
from neuropredict.stream.status import WorkerStatus
from neuropredict.stream.stats import LIVE_WINDOW_TICKS, LiveStats

log = logging.getLogger(__name__)
PREFIX = "neuropredict_"
PHASES = ("starting", "waiting", "serving", "stopped")


class Worker(Protocol):
    """What the endpoint reads of a worker (stream.worker.Worker)."""

    stats: LiveStats
    status: WorkerStatus
    delivery: object | None  # stream.delivery.Delivery, once connected
    model: object  # stream.model_slot.ModelSlot
    shadows: object  # stream.shadow.Shadows


class WorkerCollector:
    """Builds every metric family from the worker's state at scrape time (prometheus_client's
    custom-collector protocol: `collect()` yields the families)."""

    def __init__(self, worker: Worker):
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        stats = self.worker.stats
        yield from _counts(stats)
        yield from _delivery(self.worker)
        yield from _timings(stats)
        yield from _served(self.worker)
        yield from _quality(stats)


class Endpoint:
    """/metrics on `address:port` (port 0: none), served from a daemon thread by prometheus_client's
    own HTTP server."""

    def __init__(self, worker: Worker, port: int, address: str | None = None):
        self.worker, self.port, self.address = worker, port, address or environment.metrics_address()
        self._server = None

    def start(self) -> None:
        if not self.port or self._server:
            return
        registry = CollectorRegistry(auto_describe=False)
        registry.register(WorkerCollector(self.worker))
        try:
            self._server, _thread = start_http_server(self.port, addr=self.address, registry=registry)
        except OSError as exc:
            raise ServiceError(f"the metrics endpoint cannot listen on {self.address}:{self.port} ({exc.strerror}): "
                               f"set NEUROPREDICT_METRICS_PORT to a free port (0: no endpoint)") from None
        log.info("Prometheus metrics on http://%s:%d/metrics", self.address, self.port)

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@dataclass(frozen=True)
class Spec:
    """One metric: its name (without the prefix; a counter's without `_total`), type, labels and meaning."""

    name: str
    kind: str  # counter, gauge, histogram, info
    labels: tuple[str, ...]
    doc: str

    @property
    def exposed(self) -> str:
        """The name as scraped (a histogram's: with _bucket, _sum and _count)."""
        return PREFIX + self.name + {"counter": "_total", "info": "_info"}.get(self.kind, "")

    def family(self, rows=()) -> Metric:
        """The family with a sample per row (label values..., value); an info row's value is a dict."""
        make = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "info": InfoMetricFamily}[self.kind]
        family = make(PREFIX + self.name, self.doc, labels=self.labels)
        for *values, value in rows:
            family.add_metric(list(values), value)
        return family


_VERSION = ("alias", "version")
_INTERVAL = (*_VERSION, "method", "level")
CATALOG = {spec.name: spec for spec in (
    Spec("polled_ticks", "counter", (), "Input records polled, committed or not (a batch retried is polled again)."),
    Spec("consumed_ticks", "counter", (), "Input records consumed and committed."),
    Spec("ticks", "counter", ("outcome",), "Committed input records by what they became: predicted, "
                                           "dead_lettered, warmup, rekeyed (they add up to consumed)."),
    Spec("dead_letters", "counter", ("reason",), "Records sent to the dead-letter topic, by reason: malformed, "
                                                 "duplicate, out_of_order, jump."),
    Spec("batches", "counter", (), "Micro-batches committed."),
    Spec("rewinds", "counter", (), "Batches abandoned and rewound to the last commit (then retried)."),
    Spec("model_swaps", "counter", (), "Hot swaps of the production model."),
    Spec("transactions", "counter", ("result",), "Kafka transactions, committed or aborted (exactly-once "
                                                 "delivery; none at-least-once)."),
    Spec("scored_ticks", "counter", _VERSION, "Forecasts met by the price they forecast, per served version."),
    Spec("batch_duration_seconds", "histogram", (), "Time to process one polled micro-batch (committed or "
                                                    "rewound)."),
    Spec("tick_to_forecast_seconds", "histogram", (), "From a tick's record timestamp to the commit of its batch."),
    Spec("consumer_lag_records", "gauge", ("topic", "partition"), "Records between the worker's position and the "
                                                                  "end of each partition it owns (last fetch)."),
    Spec("last_poll_timestamp_seconds", "gauge", (), "When the loop last polled Kafka (Unix time)."),
    Spec("worker_phase", "gauge", ("phase",), "1 for the phase the worker is in: starting, waiting, serving, "
                                              "stopped."),
    Spec("served_model", "info", ("alias", "model", "version"), "The model version each alias serves here."),
    Spec("live_window_ticks", "gauge", _VERSION, "Scored ticks the live_* figures cover (the newest, at most "
                                                 f"{LIVE_WINDOW_TICKS})."),
    Spec("live_mse", "gauge", _VERSION, "Mean squared error of the forecasts (price units squared)."),
    Spec("live_persistence_mse", "gauge", _VERSION, "Persistence's MSE on the same ticks."),
    Spec("live_skill_ratio", "gauge", _VERSION, "1 - MSE / persistence's MSE (above 0: better than persistence)."),
    Spec("live_dm_t", "gauge", _VERSION, "Diebold-Mariano t of the squared-error difference against persistence "
                                         "(positive: worse)."),
    Spec("live_interval_coverage_ratio", "gauge", _INTERVAL, "Share of realised prices inside the interval "
                                                             "(method: model or a baseline; level: nominal)."),
    Spec("live_interval_coverage_p_value", "gauge", _INTERVAL, "Exact two-sided binomial p of that coverage "
                                                               "against the nominal level (small: off nominal)."),
)}


def _counts(stats: LiveStats) -> Iterator[Metric]:
    outcomes = {"predicted": stats.predicted, "dead_lettered": stats.dead_lettered, "warmup": stats.warmup,
                "rekeyed": stats.rekeyed}
    for name, value in (("polled_ticks", stats.polled), ("consumed_ticks", stats.consumed),
                        ("batches", stats.batches), ("rewinds", stats.rewinds), ("model_swaps", stats.swaps)):
        yield CATALOG[name].family([(value,)])
    yield CATALOG["ticks"].family(outcomes.items())
    yield CATALOG["dead_letters"].family(list(stats.dead_letter_reasons.items()))
    yield CATALOG["scored_ticks"].family([(a, v, s.n) for (a, v), s in list(stats.by_alias.items())])


def _delivery(worker: Worker) -> Iterator[Metric]:
    delivery = worker.delivery
    outcomes = delivery.transactions if delivery is not None and delivery.transactional else {}
    yield CATALOG["transactions"].family(list(outcomes.items()))
    yield CATALOG["consumer_lag_records"].family(
        [(topic, str(p), lag) for (topic, p), lag in list(worker.stats.lag.items())])


def _timings(stats: LiveStats) -> Iterator[Metric]:
    for name, histogram in (("batch_duration_seconds", stats.batch_s), ("tick_to_forecast_seconds", stats.latency_s)):
        buckets, total = histogram.cumulative()
        family = HistogramMetricFamily(PREFIX + name, CATALOG[name].doc)
        family.add_metric([], buckets, total)
        yield family


def _served(worker: Worker) -> Iterator[Metric]:
    yield CATALOG["served_model"].family([(alias, worker.model.model_name, version, {})
                                          for alias, version in worker.shadows.served(worker.model).items()])
    if worker.stats.last_poll_at:
        yield CATALOG["last_poll_timestamp_seconds"].family([(worker.stats.last_poll_at,)])
    yield CATALOG["worker_phase"].family([(name, float(worker.status.phase == name)) for name in PHASES])


def _quality(stats: LiveStats) -> Iterator[Metric]:
    """Over the newest scored ticks of each served version: MSE beside persistence on the same ticks,
    skill, the Diebold-Mariano t against persistence, interval coverage and its binomial p."""
    rows = {key: (sums, sums.figures()) for key, sums in stats.recent.totals().items() if sums.n}
    yield CATALOG["live_window_ticks"].family([(*key, sums.n) for key, (sums, _) in rows.items()])
    for name, figure in (("live_mse", "mse"), ("live_persistence_mse", "naive_mse"), ("live_skill_ratio", "skill"),
                         ("live_dm_t", "dm_t")):
        yield CATALOG[name].family([(*key, f[figure]) for key, (_, f) in rows.items()])
    hits = [(*key, method, f"{level:g}", n, inside, level) for key, (sums, _) in rows.items()
            for (method, level), (n, inside, _score) in sums.intervals.items() if n]
    yield CATALOG["live_interval_coverage_ratio"].family([(*row[:4], row[5] / row[4]) for row in hits])
    yield CATALOG["live_interval_coverage_p_value"].family(
        [(*row[:4], intervals.binomial_p(int(row[5]), int(row[4]), row[6])) for row in hits])
