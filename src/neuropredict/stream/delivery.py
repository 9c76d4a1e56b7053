"""Delivery of a batch: send its forecasts, dead letters and re-keyed ticks, wait until the broker
acknowledges all of them, then commit the consumed offsets (at-least-once). When anything fails
nothing is committed and the worker rewinds to the last commit.

A record that can never be sent (too large, invalid: the broker or the client refuses it for
what it is) must not block its partition forever: a dead letter that is refused is replaced by
a trace (no bytes; the reason, the source offset and the original size). Errors of the broker
or the network (it is away, a leader moved) are transient: they rewind and the batch is retried.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kafka.errors import (InvalidRecordError, InvalidTimestampError, KafkaError, MessageSizeTooLargeError,
                          RecordListTooLargeError)
from kafka.partitioner.default import murmur2

from neuropredict import config, messages

log = logging.getLogger(__name__)
COMMITTED_TIMEOUT_MS = config.KAFKA_CONSUMER_REQUEST_TIMEOUT_MS  # a stop flag is checked between tries

# Refusals of one record for what it is: sending it again can never succeed.
PERMANENT_RECORD_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError,
                           InvalidTimestampError)


class Delivery:
    """Sends, acknowledges, then commits or reports the failure: one batch at a time."""

    def __init__(self, producer, consumer):
        self.producer, self.consumer = producer, consumer
        self._futures: list = []
        self._dead: list = []  # (future, record, reason) of each dead letter
        self._rekeyed: list = []  # (future, record) of each tick sent back under its symbol
        self._rekey_warned: set[str] = set()
        self._partitions: dict[bytes, int] = {}  # symbol key -> partition of predicted_prices

    def begin(self) -> None:
        self._futures, self._dead, self._rekeyed = [], [], []

    def publish(self, keyed_values: list[tuple[bytes, bytes]]) -> None:
        """Forecasts, key = symbol. The partition is the default partitioner's (murmur2, as the
        Java client), cached per symbol: hashing in pure Python on every send costs more than
        the model call."""
        send, part = self.producer.send, self._partition
        self._futures += [send(config.PREDICTIONS_TOPIC, key=key, value=value, partition=part(key))
                          for key, value in keyed_values]

    def dead_letter(self, rec, reason: str) -> None:
        """The original bytes (the first DEAD_LETTER_MAX_BYTES of an oversized one) with the reason."""
        key, value, headers = messages.dead_letter(rec.key, rec.value, reason, rec.topic, rec.partition, rec.offset)
        try:
            future = self.producer.send(config.DLQ_TOPIC, key=key, value=value, headers=headers)
        except PERMANENT_RECORD_ERRORS as exc:
            future = self._send_trace(rec, reason, exc)
        self._dead.append((future, rec, reason))

    def rekey(self, rec, symbol: str) -> None:
        """A tick whose key is not its symbol goes back to the input topic under the right key,
        so it lands in its symbol's partition (and with that symbol's window) and is scored there.
        One that can never be sent again (too large) is a dead letter instead."""
        try:
            future = self.producer.send(config.PRICES_TOPIC, key=symbol.encode(), value=rec.value,
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
        self.producer.flush()
        refused_dead = [(f, rec, reason) for f, rec, reason in self._dead if _refused(f)]
        refused_rekeys = [(f, rec, symbol) for f, rec, symbol in self._rekeyed if _refused(f)]
        replaced = {id(f) for f, _, _ in (*refused_dead, *refused_rekeys)}
        sent = [*self._futures, *(f for f, _, _ in (*self._dead, *self._rekeyed) if id(f) not in replaced)]
        if replaced:
            self._dead = []
            for _, rec, symbol in refused_rekeys:
                self.dead_letter(rec, f"cannot be re-keyed under {symbol!r} (the broker refused it)")
            sent += [self._send_trace(rec, reason, f.exception) for f, rec, reason in refused_dead]
            sent += [f for f, _, _ in self._dead]
            self.producer.flush()
        errors = sorted({type(f.exception).__name__ for f in sent if f.failed()})
        return f"publishing failed ({', '.join(errors)})" if errors else None

    def commit(self) -> None:
        self.consumer.commit()

    def rewind(self, stop_event: threading.Event, then: Callable[[set], None]) -> None:
        """Seek every assigned partition back to its last commit, then `then(partitions)` (rebuild
        the state), retrying with backoff while the broker is away. The producer keeps its
        connections and reconnects by itself (idempotence is off: a broker restart does not
        poison it)."""
        backoff = 1.0
        while not stop_event.is_set():
            try:
                assigned = self.consumer.assignment()
                for tp in assigned:
                    self.consumer.seek(tp, self.consumer.committed(tp, timeout_ms=COMMITTED_TIMEOUT_MS) or 0)
                then(assigned)
                return
            except KafkaError as exc:
                log.warning("Kafka still unavailable (%s); retrying the rewind in %.0f s", type(exc).__name__, backoff)
                if stop_event.wait(backoff):
                    return
                backoff = min(backoff * 2, 30.0)

    def _send_trace(self, rec, reason: str, error: KafkaError):
        size = len(rec.key or b"") + len(rec.value or b"")
        key, value, headers = messages.unsendable_trace(reason, rec.topic, rec.partition, rec.offset, size, error)
        return self.producer.send(config.DLQ_TOPIC, key=key, value=value, headers=headers)

    def _partition(self, key: bytes) -> int:
        part = self._partitions.get(key)
        if part is None:
            count = len(self.producer.partitions_for(config.PREDICTIONS_TOPIC))
            part = self._partitions[key] = (murmur2(key) & 0x7FFFFFFF) % count
        return part


def _refused(future) -> bool:
    return future.failed() and isinstance(future.exception, PERMANENT_RECORD_ERRORS)
