"""Delivery of a batch: send its forecasts, dead letters and re-keyed ticks, wait until the broker
acknowledges all of them, then commit the consumed offsets. When anything fails nothing is
committed and the worker rewinds to the last commit.

Two guarantees (serving.guarantee):
- exactly_once: a Kafka transaction holds the batches of up to serving.commit_interval_ms (as
  Kafka Streams' commit.interval.ms under exactly-once; 0: one per batch): their outputs and
  consumed offsets commit together or not at all; a failed transaction is aborted, and
  read_committed readers (every reader here) never see it. A commit takes ~35 ms that the loop
  waits: the interval pays it once per interval, not once per small batch, and a reader sees a
  forecast up to the interval later. The consumer's group generation goes with the offsets
  (KIP-447): a worker that lost its partitions in a rebalance cannot commit them (a zombie is fenced).
- at_least_once: offsets commit after every send is acknowledged; a batch that failed after some
  sends is sent again (duplicates, never losses). On a broker whose transactions do not isolate
  (the embedded one) the worker uses this and says so.

A record that can never be sent (too large, invalid: the broker or the client refuses it for
what it is) must not block its partition forever: a dead letter that is refused is replaced by
a trace (no bytes; the reason, the source offset and the original size). Errors of the broker
or the network (it is away, a leader moved) are transient: they rewind and the batch is retried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kafka.errors import (
    InvalidRecordError,
    InvalidTimestampError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from kafka.partitioner.default import murmur2
from kafka.structs import OffsetAndMetadata

from neuropredict import kafka_io, messages, retry
from neuropredict.errors import ServiceError
from neuropredict.settings.contracts import Topics

log = logging.getLogger(__name__)
COMMITTED_TIMEOUT_MS = kafka_io.CONSUMER_REQUEST_TIMEOUT_MS  # a stop flag is checked between tries
# A commit takes ~35 ms. One that waits on a dead transaction coordinator is given up after this
# and the batch rewound: the transaction cannot end before KRaft fenced the dead broker (~9 s),
# and by then the broker may have aborted it (transaction timeout, kafka_io): a new producer
# (kafka_io.producer: its init waits for the new coordinator) and a restore cost ~1 s more.
TRANSACTION_CALL_TIMEOUT_S = 6.0
# An abort that does not answer at once is given up: a new producer with the same transactional
# id aborts what was open, on whichever coordinator holds it by then.
ABORT_CALL_TIMEOUT_S = 3.0

# Refusals of one record for what it is: sending it again can never succeed.
PERMANENT_RECORD_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError,
                           InvalidTimestampError)


class Outbox:
    """A batch's records on their way: forecasts, state, dead letters and re-keyed ticks sent, then
    acknowledged (a record refused for what it is replaced, not retried forever)."""

    def __init__(self, make_producer: Callable[[], object], topics: Topics, flush_timeout_s: float):
        self.make_producer, self.topics = make_producer, topics
        # a flush never waits forever (kafka-python's flush() has no bound of its own; after a
        # broker failure a batch waits on the sender, see _within for the transaction calls)
        self.flush_timeout_s = flush_timeout_s
        self.producer = make_producer()
        for topic in (topics.predictions, topics.dead_letters):  # metadata now, not on the first send
            self.producer.partitions_for(topic)
        self._futures: list = []
        self._dead: list = []  # (future, record, reason) of each dead letter
        self._rekeyed: list = []  # (future, record) of each tick sent back under its symbol
        self._rekey_warned: set[str] = set()
        self._partitions: dict[tuple[str, bytes], int] = {}  # (topic, symbol key) -> partition
        # Exactly-once: a record the broker refused fails its whole transaction, so the retried
        # batch must know it: (topic, partition, offset) -> why, for what replaces it then.
        self._refused: dict[tuple[str, int, int], str] = {}
        self.transactional = False

    def publish(self, keyed_values: list[tuple[bytes, bytes]], shadow: bool = False) -> None:
        """Forecasts (a shadow's: to the shadow topic), key = symbol. The partition is the default
        partitioner's (murmur2, as the Java client), cached per symbol: hashing in pure Python on
        every send costs more than the model call. Both topics have the same partition count."""
        send, part = self.producer.send, self._partition
        topic = self.topics.shadow_predictions if shadow else self.topics.predictions
        self._futures += [send(topic, key=key, value=value, partition=part(topic, key)) for key, value in keyed_values]

    def save_state(self, records: list[tuple[int, bytes, bytes]]) -> None:
        """The state topic's records of the batch's symbols (partition, key, value): in the batch's
        transaction, so the state and the offsets commit together."""
        send, topic = self.producer.send, self.topics.serving_state
        self._futures += [send(topic, key=key, value=value, partition=p) for p, key, value in records]

    def reroute(self, batch) -> list[tuple]:
        """The batch's dead letters and re-keyed ticks; returns the dead letters (record, reason)."""
        dead = batch.dead_letters()
        for rec, reason in dead:
            self.dead_letter(rec, reason)
        for rec, symbol in batch.to_rekey():
            self.rekey(rec, symbol)
        return dead

    def dead_letter(self, rec, reason: str) -> None:
        """The original bytes (the first DEAD_LETTER_MAX_BYTES of an oversized one) with the reason."""
        refused = self._refused.get(_where(rec))
        if refused:
            self._dead.append((self._send_trace(rec, reason, refused), rec, reason))
            return
        key, value, headers = messages.dead_letter(rec.key, rec.value, reason, rec.topic, rec.partition, rec.offset)
        try:
            future = self.producer.send(self.topics.dead_letters, key=key, value=value, headers=headers)
        except PERMANENT_RECORD_ERRORS as exc:
            future = self._send_trace(rec, reason, type(exc).__name__)
        self._dead.append((future, rec, reason))

    def rekey(self, rec, symbol: str) -> None:
        """A tick whose key is not its symbol goes back to the input topic under the right key,
        so it lands in its symbol's partition (and with that symbol's window) and is scored there.
        One that can never be sent again (too large) is a dead letter instead."""
        if _where(rec) in self._refused:
            return self.dead_letter(rec, f"cannot be re-keyed under {symbol!r} (the broker refused it)")
        try:
            future = self.producer.send(self.topics.prices, key=symbol.encode(), value=rec.value,
                                        headers=messages.rekey_headers(rec.topic, rec.partition, rec.offset))
        except PERMANENT_RECORD_ERRORS as exc:
            return self.dead_letter(rec, f"cannot be re-keyed under {symbol!r} ({type(exc).__name__})")
        self._rekeyed.append((future, rec, symbol))
        if symbol not in self._rekey_warned:
            self._rekey_warned.add(symbol)
            log.warning("%s: ticks arrive under another key (or none): re-keying them to its partition. Key them "
                        "by symbol: with several workers, ticks re-keyed by different workers can arrive out of "
                        "order (dead letters, counted as dlq_out_of_order_count)", symbol)

    def acknowledge(self) -> str | None:
        """Wait for every send of the batch; None when all were acknowledged, else what failed.
        A dead letter (or re-keyed tick) the broker refuses for what it is is replaced by a
        trace (or a dead letter) rather than failing the batch forever."""
        timed_out = self._flush()
        if timed_out:
            return timed_out
        refused_dead = [(f, rec, reason) for f, rec, reason in self._dead if _refused(f)]
        refused_rekeys = [(f, rec, symbol) for f, rec, symbol in self._rekeyed if _refused(f)]
        if self.transactional and (refused_dead or refused_rekeys):
            # the transaction is doomed: the retried batch replaces these records at once
            for f, rec, _ in (*refused_dead, *refused_rekeys):
                self._refused[_where(rec)] = type(f.exception).__name__
            return "the broker refused a record for what it is; the batch is retried without it"
        replaced = {id(f) for f, _, _ in (*refused_dead, *refused_rekeys)}
        sent = [*self._futures, *(f for f, _, _ in (*self._dead, *self._rekeyed) if id(f) not in replaced)]
        if replaced:
            self._dead = []
            for _, rec, symbol in refused_rekeys:
                self.dead_letter(rec, f"cannot be re-keyed under {symbol!r} (the broker refused it)")
            sent += [self._send_trace(rec, reason, type(f.exception).__name__) for f, rec, reason in refused_dead]
            sent += [f for f, _, _ in self._dead]
            timed_out = self._flush()
            if timed_out:
                return timed_out
        errors = sorted({type(f.exception).__name__ for f in sent if f.failed()})
        return f"publishing failed ({', '.join(errors)})" if errors else None

    def _flush(self) -> str | None:
        """Wait for the sends so far; what went wrong if they were not acknowledged in time."""
        try:
            self.producer.flush(timeout=self.flush_timeout_s)
        except KafkaTimeoutError:
            return f"publishing timed out (not acknowledged within {self.flush_timeout_s:g} s)"
        return None

    def _send_trace(self, rec, reason: str, error: str):
        size = len(rec.key or b"") + len(rec.value or b"")
        key, value, headers = messages.unsendable_trace(reason, rec.topic, rec.partition, rec.offset, size, error)
        return self.producer.send(self.topics.dead_letters, key=key, value=value, headers=headers)

    def _partition(self, topic: str, key: bytes) -> int:
        part = self._partitions.get((topic, key))
        if part is None:
            count = len(self.producer.partitions_for(topic))
            part = self._partitions[(topic, key)] = (murmur2(key) & 0x7FFFFFFF) % count
        return part


class Delivery(Outbox):
    """Sends (Outbox), acknowledges, then commits or reports the failure; rewinds after one."""

    def __init__(self, make_producer: Callable[[], object], consumer, transactional: bool, flush_timeout_s: float,
                 topics: Topics, commit_interval_s: float = 0.0):
        super().__init__(make_producer, topics, flush_timeout_s)
        self.consumer, self.transactional = consumer, transactional
        self.commit_interval_s = commit_interval_s if transactional else 0.0  # at-least-once: every batch
        self._began = 0.0  # when the open transaction began (monotonic)
        self._in_transaction = False
        self.held: list = []  # what to count of each batch sent since the last commit (hold, settle)
        self._held_offsets: dict = {}  # exactly-once: the positions once the last held batch was sent
        self.transactions = {"committed": 0, "aborted": 0}  # exactly-once: what became of each

    @property
    def in_transaction(self) -> bool:
        return self._in_transaction

    def begin(self) -> None:
        """Before a batch's sends: a new transaction, unless one is open (its commit is not due)."""
        if self._in_transaction:
            return
        self._futures, self._dead, self._rekeyed = [], [], []
        if self.transactional:
            self._in_transaction = True  # first: if beginning fails, the rewind's abort replaces the producer
            self._began = time.monotonic()
            self.producer.begin_transaction()

    def commit_due(self) -> bool:
        """Whether what was sent should be acknowledged and committed now (at-least-once: always)."""
        return not self._in_transaction or time.monotonic() - self._began >= self.commit_interval_s

    def hold(self, counts) -> None:
        """A batch is sent: what to count of it once it is committed, and (exactly-once) the
        positions its transaction commits. Not the positions at the commit: a transaction that
        spans several polls commits after the next poll, whose batch is not sent yet."""
        self.held.append(counts)
        if self.transactional:
            self._held_offsets = {tp: OffsetAndMetadata(self.consumer.position(tp), "", -1)
                                  for tp in self.consumer.assignment()}

    def settle(self, timing, count: Callable[..., None]) -> str | None:
        """Acknowledge, then commit, everything sent since the last commit, then count(*held) for each
        batch it holds; else what failed (nothing committed, nothing counted)."""
        with timing.timed("ack"):
            failure = self.acknowledge()
        if failure:
            return failure
        with timing.timed("commit"):
            self.commit()
        held, self.held = self.held, []
        for counts in held:
            count(*counts)
        return None

    def commit(self) -> None:
        """The offsets of what was sent: in the open transaction (those of its last batch, see
        hold; with the group's generation, which fences a zombie), else directly."""
        if not self.transactional:
            self.consumer.commit()
            return
        offsets, metadata, producer = self._held_offsets, self.consumer.group_metadata(), self.producer
        _within(TRANSACTION_CALL_TIMEOUT_S, "committing the transaction",
                lambda: (producer.send_offsets_to_transaction(offsets, metadata), producer.commit_transaction()))
        self._in_transaction = False
        self._refused.clear()
        self.transactions["committed"] += 1

    def abort(self) -> None:
        """Abort the open transaction, if any. A producer that cannot abort (fenced by a newer
        one, or its state is unknown) is replaced: a new one with the same transactional id
        aborts whatever the old one left open."""
        self.held = []
        if not self._in_transaction:
            return
        self.transactions["aborted"] += 1
        try:
            _within(ABORT_CALL_TIMEOUT_S, "aborting the transaction", self.producer.abort_transaction)
        except KafkaError as exc:
            log.warning("the transaction could not be aborted (%s); starting a new transactional producer",
                        type(exc).__name__)
            try:
                self.producer.close(timeout=1)
            except Exception as close_exc:  # the old producer is discarded either way
                log.debug("close: %s", close_exc)
            self.producer = self.make_producer()  # if this fails too, the rewind retries it all
        self._in_transaction = False

    def rewind(self, stop_event: threading.Event, then: Callable[[set], None]) -> None:
        """Abort the open transaction, seek every assigned partition back to its last commit, then
        `then(partitions)` (rebuild the state), retrying with backoff while the broker is away.
        An at-least-once producer keeps its connections and reconnects by itself (idempotence is
        off: a restart of the embedded broker does not poison it)."""
        if stop_event.is_set():
            return

        def attempt() -> None:
            self.abort()
            assigned = self.consumer.assignment()
            for tp in assigned:
                self.consumer.seek(tp, self.consumer.committed(tp, timeout_ms=COMMITTED_TIMEOUT_MS) or 0)
            then(assigned)

        try:
            retry.retry(attempt, "Kafka still unavailable, rewinding to the last commit", retry.Backoff(1.0, 30.0),
                        retry_on=(KafkaError, ServiceError), stop=stop_event)
        except (KafkaError, ServiceError):  # raised only once stopped: the worker is closing anyway
            pass


def _within(timeout_s: float, what: str, call: Callable[[], object]) -> None:
    """call() on a helper thread, waiting at most timeout_s. kafka-python 3.0.12 waits without a
    bound for a transaction's offsets, commit and abort (measured on 3 brokers: when the
    transaction coordinator died mid-batch that wait never ended, see kafka_io._coordinator_client).
    On timeout the caller rewinds, and a producer that cannot abort is replaced (the call left
    behind then fails or is moot)."""
    done, failure = threading.Event(), []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="kafka-transaction", daemon=True).start()
    if not done.wait(timeout_s):
        raise KafkaTimeoutError(f"{what} did not complete within {timeout_s:g} s")
    if failure:
        raise failure[0]


def _where(rec) -> tuple[str, int, int]:
    return rec.topic, rec.partition, rec.offset


def _refused(future) -> bool:
    return future.failed() and isinstance(future.exception, PERMANENT_RECORD_ERRORS)
