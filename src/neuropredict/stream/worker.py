"""The serving worker's loop: poll a micro-batch, parse, check and window each symbol's ticks,
forecast and publish (predict), commit (delivery), score (scoring). One member of the group.

- The model and the symbols' state: model_slot (the alias watch, hot swaps, restore on assignment).
- Delivery: exactly-once (a Kafka transaction over the batches of up to serving.commit_interval_ms)
  where the broker isolates transactions, else at-least-once; offsets commit only with, or after,
  every output. A model swap or a restore happens between transactions, never inside one.
- Live metrics: stats, on their way to MLflow from a background thread (reporter).
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kafka import ConsumerRebalanceListener
from kafka.errors import KafkaError

from neuropredict import kafka_io, retry, tracking
from neuropredict.settings import environment
from neuropredict.settings.contracts import PRODUCTION_ALIAS, Topics
from neuropredict.settings.schema import Params
from neuropredict.stream import metrics, status
from neuropredict.stream.batch import Batch
from neuropredict.stream.changelog import Changelog
from neuropredict.stream.delivery import Delivery
from neuropredict.stream.model_slot import ModelSlot
from neuropredict.stream.predict import forecast_and_publish
from neuropredict.stream.reporter import MlflowReporter
from neuropredict.stream.rules import TickRules
from neuropredict.stream.scoring import score_batch
from neuropredict.stream.shadow import Shadows
from neuropredict.stream.stats import LiveStats, summary

log = logging.getLogger(__name__)
_worker_numbers = itertools.count(1)


class Worker:
    """One member of the serving consumer group. `run()` returns when stopped or a limit is hit."""

    def __init__(self, params: Params, bootstrap: str | None = None, topics: Topics | None = None,
                 alias: str = PRODUCTION_ALIAS, report_to_mlflow: bool = True, pinned_version: str | None = None):
        self.serving = params.serving
        self.rules = TickRules.from_params(params.validate, params.serving)
        self.bootstrap = bootstrap or environment.kafka_bootstrap()
        self.topics = topics or environment.topics(params.kafka.topic_prefix)
        self.changelog = Changelog(self.topics.serving_state, lambda: [self.model.book.window, *self.shadows.windows()],
                                   self.rules.level_shift_ticks)
        self.model = ModelSlot(params.register.model_name, alias, self.rules, self.serving.restore_lookback_max,
                               pinned_version, self.changelog, stored_open=True)
        self.shadows = Shadows(params.register.model_name, () if pinned_version else self.serving.shadow_aliases,
                               self.rules, self.serving.restore_lookback_max, alias, self.changelog)
        # stable (NEUROPREDICT_WORKER_ID): a restarted worker fences its predecessor's open transaction at once
        self.worker_id = environment.worker_id() or f"{socket.gethostname()}-{os.getpid()}-{next(_worker_numbers)}"
        self.stats = LiveStats()
        self.status = status.WorkerStatus(environment.worker_status_file())
        self.stop_event = threading.Event()
        self.reporter = (MlflowReporter(self.model.model_name, self.topics.group, self.serving.metrics_interval_s)
                         if report_to_mlflow else None)
        self.consumer = self.delivery = self.reader = None
        self._to_restore: set = set()  # partitions assigned but not rebuilt yet
        self._model_pool = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.endpoint = metrics.Endpoint(self, environment.metrics_port(self.serving.metrics_port))

    @property
    def version(self) -> str:
        return self.model.version

    @property
    def guarantee(self) -> str:
        return "exactly_once" if self.delivery and self.delivery.transactional else "at_least_once"

    def start(self, wait: bool = False) -> None:
        """Load the model and connect. With wait=True (services, containers) a missing model or an
        unreachable broker/registry is retried with backoff and a log line, instead of exiting."""
        self.endpoint.start()  # first: a worker still waiting for its model or broker is seen too
        if wait:
            retry.retry(self._connect, "not ready", retry.Backoff(2.0, 60.0), stop=self.stop_event,
                        on_retry=lambda: self.status.set(status.WAITING))
        else:
            self._connect()
        self.model.watch(self.serving.alias_poll_interval_s)
        self.shadows.watch(self.serving.alias_poll_interval_s)
        if self.reporter:
            self.reporter.start()
        log.info(_started(self))
        freeze_long_lived_objects()

    def _connect(self) -> None:
        if not self.model.loaded:
            self.model.load(self.serving.model_threads)
        self.consumer = kafka_io.consumer(self.topics.group, self.bootstrap, self.serving.max_poll_records,
                                          fetch_max_wait_ms=self.serving.fetch_max_wait_ms)
        self.delivery = _delivery(self.serving, self.bootstrap, self.topics, self.worker_id, self.consumer)
        self.consumer.subscribe([self.topics.prices], listener=Rebalance(self))
        self.reader = kafka_io.TopicReader(self.bootstrap, isolated=self.delivery.transactional)

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
                self.stats.note_poll(polled, self.consumer, time.perf_counter() - polled_at)
                try:
                    if self.delivery.held and (self._to_restore or self.delivery.commit_due()):
                        with self.stats.busy():
                            self._commit()
                    if not self.delivery.in_transaction:  # between transactions: state may be rebuilt
                        self._between_transactions(limits)
                    if polled:
                        with self.stats.busy():
                            self._process(polled)
                        limits.had_data()
                except KafkaError as exc:  # broker gone or group rebalanced mid-batch: nothing was committed
                    self._rewind(f"{type(exc).__name__}: {exc}")
                self._report()
            if self.delivery.held:  # stopped between batches (not by an error in one): finish the transaction
                self._commit()
        finally:
            self.close()
        return self.stats

    def _between_transactions(self, limits: Limits) -> None:  # swaps, restores: from the committed topics
        if self.model.maybe_swap(self.reader, self.consumer):
            self.stats.swaps += 1
            self.status.set(self.status.phase, version=self.version)
        self.shadows.maybe_swap(self.reader, self.consumer, self.version)
        if self._to_restore:
            assigned, self._to_restore = set(self._to_restore), set()
            self._restore(assigned)
            limits.had_data()  # idle counts from when input could first arrive (a slow join is not idle)

    def close(self) -> None:
        self.model.stop()
        self.shadows.stop()
        self._report(final=True)
        kafka_io.close_quietly(self.delivery and self.delivery.producer, self.consumer, self.reader)
        self.consumer = self.reader = None
        self._model_pool.shutdown(wait=False)
        self.status.set(status.STOPPED, partitions=[])
        self.endpoint.stop()
        log.info("worker stopped: %s", summary(self.stats))

    def _process(self, polled: dict) -> None:
        """One micro-batch, top to bottom: nothing is counted before its commit."""
        timed, book, forecaster = self.stats.timed, self.model.book, self.model.forecaster
        self.delivery.begin()
        with timed("decode"):
            batch = Batch.parse(polled)
            self.changelog.add(batch)
        with timed("feature"):
            batch.steps = {symbol: book.advance(symbol, batch.records[idx[0]].partition, [batch.ticks[i] for i in idx])
                           for symbol, idx in batch.by_symbol.items()}
            book.warn_once(batch.steps, self.rules.level_shift_ticks, self.version)
        with timed("produce"):
            dead = self.delivery.reroute(batch)
        shadows = []  # their model calls start once production's is done, their forecasts go after production's
        forecasts, bounds = forecast_and_publish(forecaster, batch, self.delivery, self._model_pool, self.version,
                                                 self.worker_id, self.stats, book.states, then=lambda: shadows.extend(
                                                     self.shadows.start(batch, self._model_pool, self.version,
                                                                        self.stats)))
        with timed("score"):
            scores = score_batch(batch, book.states, forecasts, bounds, forecaster.live_keys, self.version)
        shadow_scores = self.shadows.finish(shadows, self.delivery, self.worker_id, self.stats)
        self.delivery.save_state(self.changelog.records(batch.by_symbol, book.states))
        self.delivery.hold((batch, [reason for _, reason in dead], scores, shadow_scores))
        if self.delivery.commit_due():
            self._commit()

    def _commit(self) -> None:
        """What was sent since the last commit, committed, then counted (nothing is counted before)."""
        failure = self.delivery.settle(self.stats, count=self.stats.add_batch)
        if failure:
            self._rewind(failure)

    def _rewind(self, why: str) -> None:
        """Nothing since the last commit was committed: back to it, windows rebuilt."""
        self.stats.rewinds += 1
        log.warning("%s; rewinding to the last committed offsets", why)
        self.delivery.rewind(self.stop_event, then=self._restore)

    def _restore(self, partitions) -> None:
        with self.changelog.restoring(self.reader):
            self.model.restore(self.reader, self.consumer, partitions)
            self.shadows.restore(self.reader, self.consumer, partitions)

    def _report(self, final: bool = False) -> None:
        """Live metrics to MLflow when due (and the last ones, closing its run, when the worker stops)."""
        if self.reporter and (final or self.reporter.due()):
            self.reporter.report(self.stats.snapshot(), self.version, self.model.model_id,
                                 self.shadows.served(self.model), final=final)


class Rebalance(ConsumerRebalanceListener):
    """Runs inside the consumer's poll, where blocking calls on it are not allowed: it only
    forgets revoked symbols and queues assigned partitions, which the loop rebuilds right after
    the poll, before it processes any record."""

    def __init__(self, worker: Worker):
        self.worker = worker

    def on_partitions_revoked(self, revoked) -> None:
        # An open transaction holds outputs of partitions going to another worker, which reads them
        # again from the last commit: abort it (kafka-python's assignors are eager: every partition
        # is revoked, and each assigned one is rebuilt from the committed topics).
        delivery = self.worker.delivery
        if delivery is not None and delivery.in_transaction:
            log.info("rebalance: aborting the open transaction (%d batches): read again from the last commit",
                     len(delivery.held))
            delivery.abort()
        self.worker._to_restore.difference_update(revoked)
        self.worker.model.book.drop(tp.partition for tp in revoked)
        self.worker.changelog.drop(tp.partition for tp in revoked)

    def on_partitions_assigned(self, assigned) -> None:
        log.info("assigned partitions %s", sorted(tp.partition for tp in assigned))
        self.worker._to_restore.update(assigned)
        owned = [tp.partition for tp in self.worker.consumer.assignment()]
        self.worker.status.set(status.SERVING, partitions=owned, version=self.worker.version)


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


def _started(worker: Worker) -> str:
    interval = f", transactions of up to {worker.serving.commit_interval_ms} ms" if worker.delivery.commit_interval_s else ""
    return (f"worker: group {worker.topics.group}, Kafka {worker.bootstrap} ({worker.guarantee.replace('_', '-')})"
            f"{interval}, model {worker.model.model_name} v{worker.version} (window {worker.model.book.window}), "
            f"batches of up to {worker.serving.max_poll_records}")


def freeze_long_lived_objects() -> None:
    """TensorFlow, MLflow and pandas leave ~10^6 long-lived objects: a full garbage collection
    walks them all (measured: ~0.3 s stalls inside a batch). Freeze them out of the GC."""
    gc.collect()
    gc.freeze()


def _delivery(serving, bootstrap: str, topics: Topics, worker_id: str, consumer) -> Delivery:
    """The worker's delivery, once the state topic is known to be there: its producer transactional
    under exactly-once where the broker isolates transactions."""
    kafka_io.require_state_topic(bootstrap, topics)
    transactional = _transactional(serving.guarantee, bootstrap)
    tid = f"{topics.group}-{worker_id}" if transactional else None
    return Delivery(lambda: kafka_io.producer(bootstrap, serving, transactional_id=tid), consumer, transactional,
                    2 * serving.delivery_timeout_ms / 1000, topics, serving.commit_interval_ms / 1000)


def _transactional(guarantee: str, bootstrap: str) -> bool:
    if guarantee != "exactly_once":
        return False
    if kafka_io.supports_transactions(bootstrap):
        return True
    log.warning("serving.guarantee is exactly_once, but the broker at %s does not isolate transactions (the "
                "embedded Tansu does not): delivering at-least-once (a retried batch may repeat forecasts)", bootstrap)
    return False


def stop_on_signals(stop_event: threading.Event) -> None:
    """SIGTERM/SIGINT only set the stop flag: the loop finishes its batch, commits, closes."""
    def stop(signum, _frame):
        log.info("%s: finishing the current batch, then stopping", signal.Signals(signum).name)
        stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def serve(params: Params, wait: bool = False, **run_kwargs: Any) -> LiveStats:
    """The `neuropredict serve` entry point."""
    tracking.bound_client_retries()
    worker = Worker(params)
    stop_on_signals(worker.stop_event)
    worker.start(wait=wait)
    return worker.run(**run_kwargs)
