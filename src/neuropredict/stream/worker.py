"""The serving worker: poll a micro-batch, parse, check and window each symbol's ticks, forecast
in one chunked model call, deliver, score. One member of the consumer group.

- Model: `models:/<name>@production`, swapped between two batches when the alias moves (watcher).
- State: each symbol's guard, window and open forecast (state), rebuilt from the topic on
  assignment (restore).
- Delivery: exactly-once (a Kafka transaction per batch) where the broker isolates transactions,
  else at-least-once; offsets commit only with, or after, every output (delivery).
- Live metrics: each forecast meets the next price, beside persistence (scoring), on their way
  to MLflow from a background thread (reporter).
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from kafka import ConsumerRebalanceListener
from kafka.errors import KafkaError

from neuropredict import config, intervals, kafka_io, messages, registry, tracking
from neuropredict.config import Params
from neuropredict.forecaster import limit_threads
from neuropredict.stream import restore
from neuropredict.stream.delivery import Delivery
from neuropredict.stream.reporter import MlflowReporter
from neuropredict.stream.batch import Batch
from neuropredict.stream.rules import TickRules
from neuropredict.stream.scoring import LiveStats, score_forecasts
from neuropredict.stream.state import Advance, SymbolBook
from neuropredict.stream.watcher import ModelWatcher

log = logging.getLogger(__name__)
_worker_numbers = itertools.count(1)


class Worker:
    """One member of the serving consumer group. `run()` returns when stopped or a limit is hit."""

    def __init__(self, params: Params, bootstrap: str | None = None, group: str = config.CONSUMER_GROUP,
                 alias: str = config.PRODUCTION_ALIAS, report_to_mlflow: bool = True,
                 pinned_version: str | None = None):
        self.serving = params.serving
        self.rules = TickRules.from_params(params.validate, params.serving)
        self.bootstrap = bootstrap or config.kafka_bootstrap()
        self.group, self.alias, self.model_name = group, alias, params.register.model_name
        self.pinned_version = pinned_version  # serve exactly this version; no hot swap
        # a stable name (NEUROPREDICT_WORKER_ID) lets a restarted worker fence its predecessor's
        # transaction at once; otherwise that one is aborted after the transaction timeout
        self.worker_id = config.worker_id() or f"{socket.gethostname()}-{os.getpid()}-{next(_worker_numbers)}"
        self.stats = LiveStats()
        self.stop_event = threading.Event()
        self.reporter = MlflowReporter(self.model_name, group, self.serving.metrics_interval_s) if report_to_mlflow else None
        self.served: registry.ServedModel | None = None
        self.book: SymbolBook | None = None
        self.model_id: str | None = None
        self.watcher: ModelWatcher | None = None
        self.consumer = self.delivery = self.reader = None
        self._to_restore: set = set()  # partitions assigned but not rebuilt yet
        self._model_pool = ThreadPoolExecutor(1, thread_name_prefix="model")

    @property
    def version(self) -> str:
        return self.served.version if self.served else ""

    # ---- lifecycle ----

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT only set the stop flag: the loop finishes its batch, commits, closes."""
        def stop(signum, _frame):
            log.info("%s: finishing the current batch, then stopping", signal.Signals(signum).name)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def start(self, wait: bool = False) -> None:
        """Load the model and connect. With wait=True (services, containers) a missing model or an
        unreachable broker/registry is retried with backoff and a log line, instead of exiting."""
        retry_until_ready(self._connect, self.stop_event) if wait else self._connect()
        if self.pinned_version is None:
            self.watcher = ModelWatcher(self.model_name, self.alias, self.served, self.serving.alias_poll_interval_s)
            self.watcher.start()
        if self.reporter:
            self.reporter.start()
        log.info("worker: group %s, Kafka %s (%s), model %s v%s (window %d), batches of up to %d", self.group,
                 self.bootstrap, self.guarantee.replace("_", "-"), self.model_name, self.version, self.book.window,
                 self.serving.max_poll_records)
        # TensorFlow, MLflow and pandas leave ~10^6 long-lived objects: a full garbage collection
        # walks them all (measured: ~0.3 s stalls inside a batch). Freeze them out of the GC.
        gc.collect()
        gc.freeze()

    def _connect(self) -> None:
        if self.served is None:
            limit_threads(self.serving.model_threads)
            self._use(registry.load(self.model_name, self.alias, version=self.pinned_version))
            self.served.forecaster.warm_up()
        self.consumer = kafka_io.consumer(self.group, self.bootstrap, self.serving.max_poll_records,
                                          fetch_max_wait_ms=self.serving.fetch_max_wait_ms)
        transactional = self._exactly_once()
        self.delivery = Delivery(self._producer_factory(transactional), self.consumer, transactional,
                                 flush_timeout_s=2 * self.serving.delivery_timeout_ms / 1000)
        for topic in (config.PREDICTIONS_TOPIC, config.DLQ_TOPIC):  # fetch metadata now, not on the
            self.delivery.producer.partitions_for(topic)          # first send of the first batch
        self.consumer.subscribe([config.PRICES_TOPIC], listener=Rebalance(self))
        self.reader = kafka_io.TopicReader(self.bootstrap)

    def _exactly_once(self) -> bool:
        if self.serving.guarantee != "exactly_once":
            return False
        if kafka_io.supports_transactions(self.bootstrap):
            return True
        log.warning("serving.guarantee is exactly_once, but the broker at %s does not isolate transactions (the "
                    "embedded Tansu does not): delivering at-least-once (a retried batch may repeat forecasts)",
                    self.bootstrap)
        return False

    def _producer_factory(self, transactional: bool):
        """New producers for Delivery (it replaces a fenced one): one transactional id per worker."""
        tid = f"{self.group}-{self.worker_id}" if transactional else None
        return lambda: kafka_io.producer(self.bootstrap, self.serving, transactional_id=tid)

    @property
    def guarantee(self) -> str:
        return "exactly_once" if self.delivery and self.delivery.transactional else "at_least_once"

    def run(self, max_messages: int | None = None, timeout_s: float | None = None,
            idle_timeout_s: float | None = None) -> LiveStats:
        """Serve until stopped, or until max_messages consumed / timeout_s / idle_timeout_s passed."""
        if self.consumer is None:
            self.start()
        limits = Limits(max_messages, timeout_s, idle_timeout_s)
        try:
            while not self.stop_event.is_set() and not limits.reached(self.stats.consumed):
                polled_at = time.perf_counter()
                polled = self.consumer.poll(timeout_ms=self.serving.poll_timeout_ms,
                                            max_records=self.serving.max_poll_records)
                self.stats.add_seconds("poll" if polled else "idle", time.perf_counter() - polled_at)
                try:
                    self._maybe_swap()  # between two batches (a swap to another window reads Kafka)
                    if self._to_restore:
                        assigned, self._to_restore = set(self._to_restore), set()
                        self._restore(assigned)
                        limits.had_data()  # idle counts from when input could first arrive (a slow join is not idle)
                    if polled:
                        with self.stats.busy():
                            self._process(polled)
                        limits.had_data()
                except KafkaError as exc:  # broker gone or group rebalanced mid-batch: nothing was committed
                    self._rewind(f"{type(exc).__name__}: {exc}")
                if self.reporter and self.reporter.due():
                    self.reporter.report(self.stats.snapshot(), self.version, self.model_id)
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
        if self.watcher:
            self.watcher.stop()
        if self.reporter:
            self.reporter.report(self.stats.snapshot(), self.version, self.model_id)
            self.reporter.close()
            self.reporter.finish()
        _close_quietly(self.delivery and self.delivery.producer, self.consumer, self.reader)
        self.consumer = self.reader = None
        self._model_pool.shutdown(wait=False)
        log.info("worker stopped: %s", summary(self.stats))

    # ---- one micro-batch, top to bottom ----

    def _process(self, polled: dict) -> None:
        timed = self.stats.timed
        self.delivery.begin()
        with timed("decode"):
            batch = Batch.parse(polled)
        with timed("feature"):
            batch.steps = {symbol: self._advance(symbol, batch, idx) for symbol, idx in batch.by_symbol.items()}
        with timed("produce"):
            dead = batch.dead_letters()
            for rec, reason in dead:
                self.delivery.dead_letter(rec, reason)
            for rec, symbol in batch.to_rekey():
                self.delivery.rekey(rec, symbol)
        forecasts, bounds = self._forecast_and_publish(batch)
        with timed("score"):
            keys = self.served.forecaster.live_keys
            scores = [c for symbol, step in batch.steps.items() for c in score_forecasts(
                symbol, self.book.states[symbol], step, forecasts[batch.accepted(symbol)],
                bounds[batch.accepted(symbol)], keys, self.version)]
        with timed("ack"):
            failure = self.delivery.acknowledge()
        if failure:
            self._rewind(failure)
            return
        with timed("commit"):
            self.delivery.commit()
        self.stats.add_batch(batch, [reason for _, reason in dead], scores)

    def _advance(self, symbol: str, batch: Batch, idx: list[int]) -> Advance:
        step = self.book.advance(symbol, batch.records[idx[0]].partition, [batch.ticks[i] for i in idx])
        state = self.book.states[symbol]
        if step.new_levels:
            log.warning("%s: %d consecutive ticks at a new price level (the ones before it are dead letters): "
                        "its window restarts there", symbol, self.rules.level_shift_ticks)
        if step.same_day and not state.cadence_warned:
            state.cadence_warned = True
            log.warning("%s: several ticks on one day, but model v%s forecasts daily closes; its forecasts for "
                        "sub-daily ticks are not calibrated (train with data.interval: 1m)", symbol, self.version)
        return step

    def _forecast_and_publish(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """One model call for every full window of the batch, in chunks: publishing chunk k
        overlaps the call of chunk k+1 on the model thread. Returns the forecast of each tick
        (NaN: none, warm-up) and its live interval bounds (forecaster.bounds_matrix)."""
        forecaster = self.served.forecaster
        forecasts, owners = np.full(len(batch.ticks), np.nan), batch.owners()
        bounds = np.full((len(batch.ticks), 2 * len(forecaster.live_keys)), np.nan)
        if not len(owners):
            return forecasts, bounds
        timed = self.stats.timed
        with timed("transform"):
            model_input = forecaster.prepare(batch.windows(), [batch.ticks[i].symbol for i in owners])
        chunk = max(config.MODEL_CHUNK_MIN_ROWS, -(-len(owners) // config.MODEL_CHUNKS_MAX))
        model_s, chunks = forecaster.model_seconds, forecaster.forecast_chunks(model_input, chunk, self._model_pool,
                                                                                 intervals.LIVE_METHODS)
        encode, version, worker, ticks, records = (messages.encode_prediction, self.version, self.worker_id,
                                                   batch.ticks, batch.records)
        fields = forecaster.interval_fields
        while True:
            with timed("model_wait"):
                rows, forecast = next(chunks, (None, None))
            if rows is None:
                break
            mine = owners[rows]
            forecasts[mine] = forecast.price
            bounds[mine] = forecaster.bounds_matrix(forecast)
            with timed("encode"):
                published = (np.column_stack([forecast.bounds[f] for f in fields]).tolist() if fields
                             else [()] * len(mine))
                out = [(ticks[i].symbol.encode(), encode(ticks[i], p, version, records[i].partition,
                                                         records[i].offset, worker, dict(zip(fields, b))))
                       for i, p, b in zip(mine.tolist(), forecast.price.tolist(), published)]
            with timed("produce"):
                self.delivery.publish(out)
        self.stats.add_seconds("model", forecaster.model_seconds - model_s)
        return forecasts, bounds

    # ---- models, failures, rebalances ----

    def _use(self, served: registry.ServedModel) -> None:
        f = served.forecaster
        self.served, self.model_id = served, registry.model_id(self.model_name, served.version)
        if self.book is None or (self.book.window, self.book.intraday) != (f.window, f.intraday):
            old, self.book = self.book, SymbolBook(self.rules, f.window, f.intraday)
            if old is not None:  # another window: read the history back, keep the open forecasts
                self.book.states = old.states
                restore.rebuild(self.book, self.reader, self.consumer, self.consumer.assignment(), served,
                                self.serving.restore_lookback_max, keep_open=True)

    def _maybe_swap(self) -> None:
        """Between two batches: switch to a newly promoted model the watcher has loaded."""
        new = self.watcher.take() if self.watcher else None
        if new is not None:
            log.info("hot swap: %s v%s -> v%s (alias %s moved)", self.model_name, self.version, new.version, self.alias)
            self._use(new)
            self.stats.swaps += 1

    def _restore(self, partitions) -> None:
        restore.rebuild(self.book, self.reader, self.consumer, partitions, self.served,
                        self.serving.restore_lookback_max)

    def _rewind(self, why: str) -> None:
        """Nothing of the failed batch was committed: back to the last commit, windows rebuilt."""
        self.stats.rewinds += 1
        log.warning("%s; rewinding to the last committed offsets", why)
        self.delivery.rewind(self.stop_event, then=self._restore)


class Rebalance(ConsumerRebalanceListener):
    """Runs on the client's IO thread, where blocking calls are not allowed: it only forgets
    revoked symbols and queues assigned partitions, which the loop rebuilds right after the
    poll, before it processes any record."""

    def __init__(self, worker: Worker):
        self.worker = worker

    def on_partitions_revoked(self, revoked) -> None:
        self.worker._to_restore.difference_update(revoked)
        self.worker.book.drop(tp.partition for tp in revoked)

    def on_partitions_assigned(self, assigned) -> None:
        log.info("assigned partitions %s", sorted(tp.partition for tp in assigned))
        self.worker._to_restore.update(assigned)


@dataclass
class Limits:
    """When `run()` returns besides a stop: messages consumed, seconds, seconds without input
    (since the last batch or the last assignment of partitions)."""

    max_messages: int | None = None
    timeout_s: float | None = None
    idle_timeout_s: float | None = None
    started: float = field(default_factory=time.monotonic)
    last_data: float = field(default_factory=time.monotonic)

    def had_data(self) -> None:
        self.last_data = time.monotonic()

    def reached(self, consumed: int) -> bool:
        now = time.monotonic()
        return ((self.max_messages is not None and consumed >= self.max_messages)
                or (self.timeout_s is not None and now - self.started > self.timeout_s)
                or (self.idle_timeout_s is not None and now - self.last_data > self.idle_timeout_s))


def _close_quietly(*clients) -> None:
    for client in clients:
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # closing is best-effort
                log.debug("close: %s", exc)


def retry_until_ready(connect, stop_event: threading.Event, first_s: float = 2.0, most_s: float = 60.0) -> None:
    """connect() until it succeeds, backing off and saying why, unless stopped meanwhile."""
    backoff = first_s
    while True:
        try:
            return connect()
        except Exception as exc:
            if stop_event.is_set():
                raise
            log.warning("not ready (%s: %s); retrying in %.0f s", type(exc).__name__, str(exc)[:200], backoff)
            if stop_event.wait(backoff):
                raise
            backoff = min(backoff * 2, most_s)


def summary(stats: LiveStats) -> str:
    figures = stats.overall.figures()
    live = (f", live MSE {figures['mse']:.4f} vs persistence {figures['naive_mse']:.4f} "
            f"(skill {100 * figures['skill']:+.2f} %) on {figures['scored']:.0f} ticks") if figures else ""
    coverage = [f"{intervals.label(level)} %: {figures[name]:.1f} %" for m, level in stats.overall.intervals
                if m == "model" and (name := intervals.metric_name(m, "coverage", level)) in figures]
    covered = f"; interval coverage {', '.join(coverage)}" if coverage else ""
    rekeyed = f" + {stats.rekeyed} re-keyed" if stats.rekeyed else ""
    return (f"{stats.consumed} consumed = {stats.predicted} predicted + {stats.dead_lettered} dead-lettered + "
            f"{stats.warmup} warm-up{rekeyed}{live}{covered}")


def serve(params: Params, wait: bool = False, **run_kwargs: Any) -> LiveStats:
    """The `neuropredict serve` entry point."""
    tracking.bound_client_retries()
    worker = Worker(params)
    worker.install_signal_handlers()
    worker.start(wait=wait)
    return worker.run(**run_kwargs)
