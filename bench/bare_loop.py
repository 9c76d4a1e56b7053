"""The client's own ceiling: the serving loop with nothing of the worker in it.

Poll a batch, decode each record, send one output per record (the worker's output, same fields
and size) to the input's partition, wait for the acknowledgements, commit: at-least-once, or one
transaction per batch (offsets inside it) for exactly-once. No model, no windows, no scoring.

- `kafka_python_loop`: with the worker's own client (kafka-python) and its own settings
  (`kafka_io.consumer` and `kafka_io.producer` from `params.serving`), so the worker's share of
  it is what the worker's own code costs.
- `confluent_loop`: the same loop with confluent-kafka (librdkafka, C) and the same settings, an
  outside anchor for what a Kafka client can do on this machine. Not a product dependency: used
  when importable (`pip install confluent-kafka`), else reported as absent.
"""

from __future__ import annotations

import time
import uuid

import orjson
from kafka.structs import OffsetAndMetadata

from neuropredict import kafka_io


def kafka_python_loop(bootstrap: str, serving, source: str, sink: str, n: int, template: dict,
                      transactional: bool) -> dict:
    """Consume the first n records of `source` (a new group: from the start) into `sink`."""
    group = f"bench-bare-{uuid.uuid4().hex[:8]}"
    consumer = kafka_io.consumer(group, bootstrap, serving.max_poll_records, fetch_max_wait_ms=serving.fetch_max_wait_ms)
    producer = kafka_io.producer(bootstrap, serving, transactional_id=f"{group}-tx" if transactional else None)
    consumer.subscribe([source])
    consumed, batches, first, send, loads, dumps = 0, 0, None, producer.send, orjson.loads, orjson.dumps
    try:
        while consumed < n:
            polled = consumer.poll(timeout_ms=serving.poll_timeout_ms, max_records=serving.max_poll_records)
            if not polled:
                continue
            if first is None:
                first, cpu = time.perf_counter(), time.process_time()
            if transactional:
                producer.begin_transaction()
            for records in polled.values():
                for rec in records:
                    send(sink, key=rec.key, value=dumps({**template, **loads(rec.value)}), partition=rec.partition)
                consumed += len(records)
            producer.flush()
            if transactional:
                offsets = {tp: OffsetAndMetadata(consumer.position(tp), "", -1) for tp in consumer.assignment()}
                producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
                producer.commit_transaction()
            else:
                consumer.commit()
            batches += 1
        seconds, cpu = time.perf_counter() - first, time.process_time() - cpu
    finally:
        kafka_io.close_quietly(producer, consumer)
    return {"client": "kafka-python", "consumed": consumed, "batches": batches, "seconds": seconds,
            "process_cpu_seconds": cpu,
            "ticks_per_s": consumed / seconds}


def confluent_version() -> str | None:
    try:
        import confluent_kafka
    except ImportError:
        return None
    return confluent_kafka.__version__


def confluent_loop(bootstrap: str, serving, source: str, sink: str, n: int, template: dict,
                   transactional: bool) -> dict:
    """The same loop with confluent-kafka, configured as kafka_io configures kafka-python."""
    from confluent_kafka import Consumer, Producer

    group = f"bench-confluent-{uuid.uuid4().hex[:8]}"
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                         "fetch.wait.max.ms": serving.fetch_max_wait_ms})
    settings = {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": serving.producer_linger_ms,
                "batch.size": serving.producer_batch_bytes, "compression.type": serving.compression,
                "enable.idempotence": transactional, "max.in.flight.requests.per.connection": 5}
    if transactional:
        settings["transactional.id"] = f"{group}-tx"
    producer = Producer(settings)
    if transactional:
        producer.init_transactions(30)
    consumer.subscribe([source])
    consumed, batches, first, produce, loads, dumps = 0, 0, None, producer.produce, orjson.loads, orjson.dumps
    try:
        while consumed < n:
            polled = consumer.consume(num_messages=serving.max_poll_records, timeout=serving.poll_timeout_ms / 1000)
            polled = [m for m in polled if m.error() is None]
            if not polled:
                continue
            if first is None:
                first, cpu = time.perf_counter(), time.process_time()
            if transactional:
                producer.begin_transaction()
            for m in polled:
                value = dumps({**template, **loads(m.value())})
                try:
                    produce(sink, value, m.key(), partition=m.partition())
                except BufferError:  # the local queue is full: let it drain, then send
                    producer.poll(0.05)
                    produce(sink, value, m.key(), partition=m.partition())
            consumed += len(polled)
            producer.flush(30)
            if transactional:
                producer.send_offsets_to_transaction(consumer.position(consumer.assignment()),
                                                     consumer.consumer_group_metadata(), 30)
                producer.commit_transaction(30)
            else:
                consumer.commit(asynchronous=False)
            batches += 1
        seconds, cpu = time.perf_counter() - first, time.process_time() - cpu
    finally:
        consumer.close()
    return {"client": f"confluent-kafka {confluent_version()}", "consumed": consumed, "batches": batches,
            "seconds": seconds, "process_cpu_seconds": cpu, "ticks_per_s": consumed / seconds}
