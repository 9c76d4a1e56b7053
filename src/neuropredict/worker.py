"""The serving worker: poll a micro-batch, parse, window, one model call, publish, commit.

- Model: `models:/<name>@production`, called directly on the whole batch (compiled), and swapped
  between two batches when the alias moves (a background thread loads and warms the new one).
- State: each symbol's last W prices. On partition assignment they are read back from the topic
  itself (the messages before the committed offset), so a restart loses no warm-up.
- Delivery: at-least-once. Offsets are committed only after every output and dead letter of the
  batch is acknowledged; a failed send rewinds to the last commit and scores the batch again.
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
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from kafka.errors import KafkaError

from neuropredict import config, kafka_io, messages, registry
from neuropredict.config import Params
from neuropredict.live import LiveStats, MlflowReporter
from neuropredict.messages import Tick

log = logging.getLogger(__name__)
PIPELINE_CHUNKS = 8  # a batch's model calls, overlapped with publishing the previous chunk
_worker_numbers = itertools.count(1)


@dataclass
class SymbolState:
    """One symbol's recent prices and its open forecast (scored when the next price arrives)."""

    partition: int
    prices: np.ndarray = field(default_factory=lambda: np.empty(0))
    session: str = ""               # session of the buffered prices (intraday models)
    pending: float = float("nan")   # the open forecast of the next price ...
    pending_version: str = ""       # ... the model version that made it ...
    last_price: float = float("nan")  # ... and the price it was made at (persistence's forecast)
    last_session: str = ""
    last_day: str = ""  # daily models: the date of the last tick (cadence check)
    cadence_warned: bool = False


@dataclass
class _Parsed:
    ticks: list[Tick] = field(default_factory=list)
    where: list[tuple[int, int]] = field(default_factory=list)  # (partition, offset)
    created_ms: list[int] = field(default_factory=list)


class Worker:
    """One member of the serving consumer group. `run()` returns when stopped or a limit is hit."""

    def __init__(self, params: Params, bootstrap: str | None = None, group: str = config.CONSUMER_GROUP,
                 alias: str = config.PRODUCTION_ALIAS, report_to_mlflow: bool = True,
                 pinned_version: str | None = None):
        self.params, self.s = params, params.serving
        self.bootstrap = bootstrap or config.kafka_bootstrap()
        self.group, self.alias = group, alias
        self.pinned_version = pinned_version  # serve exactly this version; no hot swap
        self.model_name = params.register.model_name
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{next(_worker_numbers)}"
        self.stats = LiveStats()
        self.states: dict[str, SymbolState] = {}
        self.stop_event = threading.Event()
        self._batch_scores: list = []
        self._to_restore: set = set()  # partitions assigned but not yet rebuilt
        self._partitions: dict[bytes, int] = {}  # symbol key -> output partition
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.reporter = MlflowReporter(self.model_name, group, self.s.metrics_interval_s) if report_to_mlflow else None
        self.loaded: registry.Loaded | None = None
        self.model_id: str | None = None
        self.watcher: ModelWatcher | None = None
        self.consumer = None
        self.producer = None
        self._restorer = None

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
        backoff = 2.0
        while True:
            try:
                self._connect()
                break
            except Exception as exc:
                if not wait or self.stop_event.is_set():
                    raise
                log.warning("not ready (%s: %s); retrying in %.0f s", type(exc).__name__, str(exc)[:200], backoff)
                if self.stop_event.wait(backoff):
                    raise
                backoff = min(backoff * 2, 60.0)
        self._start_threads()
        # TensorFlow, MLflow and pandas leave ~10^6 long-lived objects: a full garbage collection
        # walks them all (measured: ~0.3 s stalls inside a batch). Freeze them out of the GC.
        gc.collect()
        gc.freeze()

    def _connect(self) -> None:
        if self.loaded is None:
            self._load_initial_model()
        self.producer = self.producer or kafka_io.producer(self.bootstrap, self.s)
        for topic in (config.PREDICTIONS_TOPIC, config.DLQ_TOPIC):  # fetch metadata now, not on the
            self.producer.partitions_for(topic)                   # first send of the first batch
        self.consumer = kafka_io.consumer(self.group, self.bootstrap, self.s.max_poll_records,
                                          fetch_max_wait_ms=self.s.fetch_max_wait_ms)
        self.consumer.subscribe([config.PRICES_TOPIC], listener=_Rebalance(self))

    def _start_threads(self) -> None:
        if self.pinned_version is None:
            self.watcher = ModelWatcher(self)
            self.watcher.start()
        if self.reporter:
            self.reporter.start()
        log.info("worker: group %s, Kafka %s, model %s v%s (window %d), batches of up to %d",
                 self.group, self.bootstrap, self.model_name, self.loaded.version, self.window,
                 self.s.max_poll_records)

    def run(self, max_messages: int | None = None, timeout_s: float | None = None,
            idle_timeout_s: float | None = None) -> LiveStats:
        """Serve until stopped, or until max_messages consumed / timeout_s / idle_timeout_s passed."""
        if self.consumer is None:
            self.start()
        deadline = time.monotonic() + timeout_s if timeout_s else None
        last_data = time.monotonic()
        try:
            while not self.stop_event.is_set():
                self._maybe_swap()
                polled = time.perf_counter()
                batch = self.consumer.poll(timeout_ms=self.s.poll_timeout_ms, max_records=self.s.max_poll_records)
                self.stats.add_seconds("poll" if batch else "idle", time.perf_counter() - polled)
                try:
                    if self._to_restore:
                        assigned, self._to_restore = set(self._to_restore), set()
                        self._restore(assigned)
                    if batch:
                        began = time.perf_counter()
                        self.stats.first_data_at = self.stats.first_data_at or began
                        self._process(batch)
                        self.stats.busy_s += time.perf_counter() - began
                        last_data = time.monotonic()
                except KafkaError as exc:  # broker gone or group rebalanced mid-batch: nothing was committed
                    self._recover(f"{type(exc).__name__}: {exc}")
                self._maybe_report()
                now = time.monotonic()
                if max_messages is not None and self.stats.consumed >= max_messages:
                    break
                if (deadline and now > deadline) or (idle_timeout_s and now - last_data > idle_timeout_s):
                    break
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
        for client in (self.producer, self.consumer, self._restorer):
            if client is not None:
                try:
                    client.close()
                except Exception as exc:  # closing is best-effort
                    log.debug("close: %s", exc)
        self.producer = self.consumer = self._restorer = None
        self._model_thread.shutdown(wait=False)
        log.info("worker stopped: %s", _summary(self.stats))

    # ---- the model ----

    @property
    def version(self) -> str:
        return self.loaded.version if self.loaded else ""

    @property
    def window(self) -> int:
        return self.loaded.forecaster.window

    def _load_initial_model(self) -> None:
        limit_tensorflow_threads(self.s.model_threads)
        self.loaded = registry.load(self.model_name, self.alias, version=self.pinned_version)
        self.model_id = registry.model_id(self.model_name, self.loaded.version)
        warm_up(self.loaded)

    def _maybe_swap(self) -> None:
        """Between two batches: switch to a newly promoted model the watcher has loaded."""
        new = self.watcher.take() if self.watcher else None
        if new is None:
            return
        old_window = self.window
        log.info("hot swap: %s v%s -> v%s (alias %s moved)", self.model_name, self.version, new.version, self.alias)
        self.loaded = new
        self.model_id = registry.model_id(self.model_name, new.version)
        self.stats.swaps += 1
        if self.window > old_window:  # the new model needs longer windows: read them back
            self._restore(self.consumer.assignment(), reopen=False)

    # ---- one micro-batch ----

    def _process(self, batch: dict) -> None:
        self._batch_scores: list = []  # applied to the live stats only once the batch is committed
        timed = self.stats.timed
        with timed("decode"):
            parsed, dead = self._parse(batch)
        with timed("feature"):
            by_symbol, windows, owners, warmup = self._features(parsed)
        with timed("produce"):
            futures = [self.producer.send(config.DLQ_TOPIC, key=rec.key, value=rec.value,
                                          headers=messages.dlq_headers(reason, rec.topic, rec.partition, rec.offset))
                       for rec, reason in dead]
        predictions, published = self._predict_and_publish(parsed, windows, owners)
        futures += published
        with timed("score"):
            for symbol, (idx, ticks) in by_symbol.items():
                self._score_open_forecasts(symbol, ticks, predictions[idx])
        with timed("ack"):
            self.producer.flush()
        if any(f.failed() for f in futures):
            errors = {type(f.exception).__name__ for f in futures if f.failed()}
            self._recover(f"publishing failed ({', '.join(sorted(errors))})")
            return
        with timed("commit"):
            self.consumer.commit()
        self.stats.last_commit_at = time.perf_counter()
        for contribution in self._batch_scores:
            self.stats.score(*contribution)
        now_ms = time.time() * 1000
        self.stats.latencies_ms.extend(now_ms - np.asarray(parsed.created_ms, dtype=np.float64))
        self.stats.consumed += len(parsed.ticks) + len(dead)
        self.stats.predicted += int(len(owners))
        self.stats.dead_lettered += len(dead)
        self.stats.warmup += warmup
        self.stats.batches += 1

    def _output_partition(self, key: bytes) -> int:
        """The default partitioner's choice for a key (murmur2, as the Java client), cached per
        symbol: hashing in pure Python on every send costs more than the model call."""
        part = self._partitions.get(key)
        if part is None:
            from kafka.partitioner.default import murmur2

            count = len(self.producer.partitions_for(config.PREDICTIONS_TOPIC))
            part = self._partitions[key] = (murmur2(key) & 0x7FFFFFFF) % count
        return part

    def _parse(self, batch: dict) -> tuple[_Parsed, list]:
        parsed, dead = _Parsed(), []
        for tp, records in batch.items():
            for rec in records:
                tick = messages.parse_tick(rec.value)
                if isinstance(tick, str):
                    dead.append((rec, tick))
                else:
                    parsed.ticks.append(tick)
                    parsed.where.append((tp.partition, rec.offset))
                    parsed.created_ms.append(rec.timestamp)
        return parsed, dead

    def _features(self, parsed: _Parsed) -> tuple[dict[str, tuple[list[int], list[Tick]]], np.ndarray,
                                                   np.ndarray, int]:
        """Append every tick to its symbol's history; return each symbol's positions and ticks, the
        full windows (one per tick that has one), which tick owns each window, the warm-up count."""
        by_symbol: dict[str, tuple[list[int], list[Tick]]] = defaultdict(lambda: ([], []))
        for i, tick in enumerate(parsed.ticks):
            idx, ticks = by_symbol[tick.symbol]
            idx.append(i)
            ticks.append(tick)
        windows, owners, warmup = [], [], 0
        for symbol, (idx, ticks) in by_symbol.items():
            w, rows = self._windows(symbol, ticks, parsed.where[idx[0]][0])
            self._check_cadence(symbol, ticks)
            warmup += len(idx) - len(rows)
            if len(rows):
                windows.append(w)
                owners.extend(idx[r] for r in rows)
        stacked = np.concatenate(windows) if windows else np.empty((0, self.window))
        return by_symbol, stacked, np.asarray(owners, dtype=np.int64), warmup

    def _predict_and_publish(self, parsed: _Parsed, windows: np.ndarray,
                             owners: np.ndarray) -> tuple[np.ndarray, list]:
        """Model calls in chunks on a helper thread, so publishing chunk k overlaps the model call of
        chunk k+1 (TensorFlow releases the GIL; the helper does no other Python work, so it never
        waits for the GIL behind the send loop). Each symbol's outputs are sent in order. Returns
        the forecasts (NaN for warm-up ticks) and the send futures."""
        predictions, futures = np.full(len(parsed.ticks), np.nan), []
        if not len(owners):
            return predictions, futures
        forecaster, timed = self.loaded.forecaster, self.stats.timed
        with timed("transform"):
            x, mu, sd = forecaster.features(windows, [parsed.ticks[i].symbol for i in owners])
        chunks = np.array_split(np.arange(len(owners)), max(1, min(PIPELINE_CHUNKS, len(owners) // 256)))
        def call(chunk: np.ndarray) -> np.ndarray:  # on the model thread: no Python work but the call
            began = time.perf_counter()
            out = forecaster.model_outputs(chunk)
            self.stats.add_seconds("model", time.perf_counter() - began)
            return out

        send, part, encode = self.producer.send, self._output_partition, messages.encode_prediction
        version, worker = self.version, self.worker_id
        pending = self._model_thread.submit(call, x[chunks[0]])
        for k, rows in enumerate(chunks):
            with timed("model_wait"):
                outputs = pending.result()
            if k + 1 < len(chunks):
                pending = self._model_thread.submit(call, x[chunks[k + 1]])
            mine = owners[rows]
            values = forecaster.scaler.to_price(outputs, windows[rows, -1], mu[rows], sd[rows])
            predictions[mine] = values
            with timed("encode"):
                out = []
                for i, value in zip(mine.tolist(), values.tolist()):
                    tick = parsed.ticks[i]
                    p, o = parsed.where[i]
                    out.append((tick.symbol.encode(), encode(tick, value, version, p, o, worker)))
            with timed("produce"):
                futures += [send(config.PREDICTIONS_TOPIC, key=key, value=value, partition=part(key))
                            for key, value in out]
        return predictions, futures

    def _windows(self, symbol: str, ticks: list[Tick], partition: int) -> tuple[np.ndarray, list[int]]:
        """Append the ticks to the symbol's history; return the full windows ending at each tick
        and the positions (in `ticks`) they belong to. Earlier positions are warm-up."""
        st = self.states.get(symbol)
        if st is None:
            st = self.states[symbol] = SymbolState(partition)
        w = self.window
        out, rows = [], []
        for start, end, session in _session_runs(ticks, self.loaded.forecaster.scaler.session_reset):
            prices = np.fromiter((t.price for t in ticks[start:end]), np.float64, end - start)
            history = st.prices if session == st.session else np.empty(0)
            seq = np.concatenate([history, prices])
            full = len(seq) - w + 1
            if full > 0:
                take = min(full, end - start)
                out.append(sliding_window_view(seq, w)[-take:])
                rows.extend(range(end - take, end))
            st.prices = seq[-max(w, 1):].copy()
            st.session = session
        return (np.concatenate(out) if out else np.empty((0, w))), rows

    def _check_cadence(self, symbol: str, ticks: list[Tick]) -> None:
        """A daily model forecasts the next daily close. Several ticks of one symbol on one day
        (the seed fed its daily model one-second ticks) get forecasts the model was never trained
        for: they are still scored, but counted, and each symbol says so once."""
        if self.loaded.forecaster.scaler.session_reset:
            return
        st = self.states[symbol]
        days = [t.timestamp[:10] for t in ticks]
        repeats = sum(a == b for a, b in zip([st.last_day, *days[:-1]], days))
        st.last_day = days[-1]
        if repeats:
            self.stats.cadence_mismatches += repeats
            if not st.cadence_warned:
                st.cadence_warned = True
                log.warning("%s: several ticks on %s, but model v%s forecasts daily closes; its forecasts "
                            "for sub-daily ticks are not calibrated (train with data.interval: 1m)",
                            symbol, days[-1], self.version)

    def _score_open_forecasts(self, symbol: str, ticks: list[Tick], preds: np.ndarray) -> None:
        """Each forecast meets the price it forecast: the symbol's next tick (in the same session,
        for intraday models), beside persistence's forecast (the price it was made at)."""
        st = self.states[symbol]
        actual = np.fromiter((t.price for t in ticks), np.float64, len(ticks))
        prev_pred = np.concatenate([[st.pending], preds[:-1]])
        prev_price = np.concatenate([[st.last_price], actual[:-1]])
        ok = ~np.isnan(prev_pred)
        sessions = self._sessions(ticks)
        if sessions is not None:
            ok &= np.array([st.last_session, *sessions[:-1]]) == np.array(sessions)
        if ok[0] and st.pending_version != self.version:
            # the open forecast came from the model before a swap: score it under its own version
            self._batch_scores.append((symbol, st.pending_version, actual[:1] - prev_pred[:1],
                                       actual[:1] - prev_price[:1]))
            ok[0] = False
        self._batch_scores.append((symbol, self.version, actual[ok] - prev_pred[ok], actual[ok] - prev_price[ok]))
        st.pending, st.pending_version = float(preds[-1]), self.version
        st.last_price = float(actual[-1])
        st.last_session = sessions[-1] if sessions is not None else ""

    def _sessions(self, ticks: list[Tick]) -> list[str] | None:
        return [t.timestamp[:10] for t in ticks] if self.loaded.forecaster.scaler.session_reset else None

    # ---- failures and rebalances ----

    def _recover(self, why: str) -> None:
        """Nothing of the failed batch was committed: seek back to the last commit and rebuild the
        windows from Kafka, retrying with backoff while the broker is away. The producer keeps
        its connection pool and reconnects by itself (idempotence is off, so a broker restart
        does not poison it)."""
        self._batch_scores = []
        backoff = 1.0
        while not self.stop_event.is_set():
            log.warning("%s; rewinding to the last committed offsets", why)
            try:
                assigned = self.consumer.assignment()
                for tp in assigned:
                    self.consumer.seek(tp, self.consumer.committed(tp) or 0)
                self._restore(assigned)
                return
            except KafkaError as exc:
                why = f"Kafka still unavailable ({type(exc).__name__})"
                if self.stop_event.wait(backoff):
                    return
                backoff = min(backoff * 2, 30.0)

    def _drop(self, partitions) -> None:
        gone = {tp.partition for tp in partitions}
        for symbol in [s for s, st in self.states.items() if st.partition in gone]:
            del self.states[symbol]

    def _restore(self, partitions, reopen: bool = True) -> None:
        """Rebuild each symbol's last W prices from the messages before the committed offset.
        reopen: recompute each symbol's open forecast (after a restart); a hot swap keeps the one
        the previous model published instead, so it is scored under that model's version."""
        kept = {s: (st.pending, st.pending_version) for s, st in self.states.items()} if not reopen else {}
        self._drop(partitions)
        for tp in partitions:
            committed = self.consumer.committed(tp)
            if not committed:
                continue
            history = self._read_back(tp, committed)
            for symbol, ticks in history.items():
                self.states.pop(symbol, None)
                self._windows(symbol, ticks, tp.partition)
                st = self.states[symbol]
                st.last_price = ticks[-1].price
                st.last_session, st.last_day = st.session, ticks[-1].timestamp[:10]
                if symbol in kept:
                    st.pending, st.pending_version = kept[symbol]
                elif len(st.prices) >= self.window:  # reopen the forecast the last tick made
                    st.pending = float(self.loaded.forecaster.predict_next(st.prices[None, -self.window:], [symbol])[0])
                    st.pending_version = self.version
            log.info("partition %d: rebuilt %d symbols from %d messages before offset %d", tp.partition,
                     len(history), sum(len(t) for t in history.values()), committed)

    def _read_back(self, tp, committed: int) -> dict[str, list[Tick]]:
        """The valid ticks of each symbol just before `committed`, reading further back until every
        symbol seen has a full window (or the partition start / the lookback bound is reached)."""
        span = min(max(self.window * 16, 256), self.s.restore_lookback_max)
        while True:
            lo = max(0, committed - span)
            ticks = self._read_range(tp, lo, committed)
            short = [s for s, t in ticks.items() if len(t) < self.window]
            if not short or lo == 0 or span >= self.s.restore_lookback_max:
                return ticks
            span = min(span * 4, self.s.restore_lookback_max)

    def _read_range(self, tp, lo: int, hi: int) -> dict[str, list[Tick]]:
        if self._restorer is None:
            self._restorer = kafka_io.consumer(None, self.bootstrap, max_poll_records=50_000)
        c = self._restorer
        c.assign([tp])
        c.seek(tp, lo)
        out: dict[str, list[Tick]] = defaultdict(list)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            recs = c.poll(timeout_ms=500).get(tp, [])
            for rec in recs:
                if rec.offset >= hi:
                    return out
                tick = messages.parse_tick(rec.value)
                if not isinstance(tick, str):
                    out[tick.symbol].append(tick)
            if c.position(tp) >= hi:  # also past gaps in the offsets (compaction, transaction markers)
                return out
        log.warning("partition %d: read-back of offsets %d..%d timed out; some windows restart warm-up",
                    tp.partition, lo, hi)
        return out

    def _maybe_report(self) -> None:
        if self.reporter and self.reporter.due():
            self.reporter.report(self.stats.snapshot(), self.version, self.model_id)


def _session_runs(ticks: list[Tick], session_reset: bool):
    """(start, end, session) runs of consecutive ticks in one session (one run for daily data)."""
    if not session_reset:
        yield 0, len(ticks), ""
        return
    start = 0
    for i in range(1, len(ticks) + 1):
        if i == len(ticks) or ticks[i].timestamp[:10] != ticks[start].timestamp[:10]:
            yield start, i, ticks[start].timestamp[:10]
            start = i


def limit_tensorflow_threads(threads: int) -> None:
    """On a few cores a batched call on one thread leaves the other to Kafka's IO; TF's spinning
    thread pool otherwise competes with the producer (measured: bench/serving.py). 0: TF decides."""
    if threads <= 0:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already ran in this process (tests, notebooks): keep its pool
        log.debug("TensorFlow already initialised; thread settings unchanged")


def warm_up(loaded: registry.Loaded) -> None:
    """Trace the compiled call once so the first real batch does not pay for it."""
    w = loaded.forecaster.window
    loaded.forecaster.predict_next(np.full((2, w), 100.0), ["WARMUP", "WARMUP"])


def _summary(stats: LiveStats) -> str:
    figures = stats.overall.figures()
    live = (f", live MSE {figures['mse']:.4f} vs persistence {figures['naive_mse']:.4f} "
            f"(skill {100 * figures['skill']:+.2f} %) on {figures['scored']:.0f} ticks") if figures else ""
    return (f"{stats.consumed} consumed = {stats.predicted} predicted + {stats.dead_lettered} dead-lettered + "
            f"{stats.warmup} warm-up{live}")


class _Rebalance:
    """kafka-python rebalance listener. It runs on the client's IO thread, where blocking calls
    are not allowed: it only forgets revoked symbols and queues assigned partitions, which the
    loop rebuilds right after the poll, before it processes any record."""

    def __new__(cls, worker: Worker):
        from kafka import ConsumerRebalanceListener

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                worker._to_restore.difference_update(revoked)
                worker._drop(revoked)

            def on_partitions_assigned(self, assigned):
                log.info("assigned partitions %s", sorted(tp.partition for tp in assigned))
                worker._to_restore.update(assigned)

        return Listener()


class ModelWatcher:
    """Polls the alias; when it moves, loads and warms the new version off the hot path."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self._ready: registry.Loaded | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="model-watcher", daemon=True)
        self._seen = worker.version

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def take(self) -> registry.Loaded | None:
        with self._lock:
            ready, self._ready = self._ready, None
        return ready

    def _loop(self) -> None:
        """Check at once (the first registry call of a process is the slow one: better before
        traffic than in the middle of a batch), then every alias_poll_interval_s."""
        w = self.worker
        backoff = w.s.alias_poll_interval_s
        while True:
            try:
                version = registry.alias_version(w.model_name, w.alias)
                if version and version != self._seen:
                    loaded = registry.load(w.model_name, version=version)
                    warm_up(loaded)
                    with self._lock:
                        self._ready = loaded
                    self._seen = version
                backoff = w.s.alias_poll_interval_s
            except Exception as exc:  # registry down: keep serving the current model
                log.warning("cannot check %s@%s (%s: %s); serving v%s, retrying", w.model_name, w.alias,
                            type(exc).__name__, str(exc)[:120], w.version)
                backoff = min(backoff * 2, 60.0)
            if self._stop.wait(backoff):
                return


def serve(params: Params, wait: bool = False, **run_kwargs: Any) -> LiveStats:
    """The `neuropredict serve` entry point."""
    worker = Worker(params)
    worker.install_signal_handlers()
    worker.start(wait=wait)
    return worker.run(**run_kwargs)
