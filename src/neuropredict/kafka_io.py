"""kafka-python clients with settings that work on the embedded broker and on Apache Kafka alike."""

from __future__ import annotations

import logging
import time
from typing import Any

from neuropredict import config
from neuropredict.config import KafkaParams, ServingParams
from neuropredict.errors import ServiceError

log = logging.getLogger(__name__)

# Session 6000 / heartbeat 2000: the smallest a default Apache Kafka accepts. The embedded broker
# holds a join until half the session timeout has passed: ~3 s here, ~23 s with the defaults.
GROUP_SETTINGS = dict(session_timeout_ms=6000, heartbeat_interval_ms=2000, max_poll_interval_ms=300000)
BOOTSTRAP_TIMEOUT_MS = 10000


def _unreachable(bootstrap: str, exc: Exception) -> ServiceError:
    hint = ("start the embedded broker with `neuropredict up`" if not config.kafka_is_external()
            else "check KAFKA_BOOTSTRAP_SERVERS")
    return ServiceError(f"cannot reach Kafka at {bootstrap} ({type(exc).__name__}): {hint}")


def producer(bootstrap: str | None = None, serving: ServingParams | None = None, **overrides: Any):
    """A producer tuned for throughput. Idempotence is off: the embedded broker forgets producer
    ids on restart and an idempotent producer never recovers; at-least-once comes from committing
    offsets only after sends are acknowledged. Without idempotence a retried request can land
    after a later one, so order within a symbol holds except across a retry."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    bootstrap = bootstrap or config.kafka_bootstrap()
    s = serving or ServingParams()
    settings: dict[str, Any] = dict(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, retries=5,
        linger_ms=s.producer_linger_ms, batch_size=s.producer_batch_bytes,
        compression_type=None if s.compression == "none" else s.compression,
        delivery_timeout_ms=30000, request_timeout_ms=10000, bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        max_in_flight_requests_per_connection=5,
    )
    settings.update(overrides)
    try:
        return KafkaProducer(**settings)
    except KafkaError as exc:
        raise _unreachable(bootstrap, exc) from None


def consumer(group: str | None, bootstrap: str | None = None, max_poll_records: int = 500,
             **overrides: Any):
    """A consumer that commits only when told to (after its outputs are acknowledged)."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    bootstrap = bootstrap or config.kafka_bootstrap()
    settings: dict[str, Any] = dict(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024, max_poll_records=max_poll_records,
        bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS, request_timeout_ms=30000,
    )
    if group:
        settings.update(GROUP_SETTINGS)
    settings.update(overrides)
    try:
        return KafkaConsumer(**settings)
    except KafkaError as exc:
        raise _unreachable(bootstrap, exc) from None


def admin(bootstrap: str | None = None):
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    bootstrap = bootstrap or config.kafka_bootstrap()
    try:
        return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000,
                                bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
    except KafkaError as exc:
        raise _unreachable(bootstrap, exc) from None


def ensure_topics(params: KafkaParams, bootstrap: str | None = None,
                  topics: tuple[str, ...] = config.TOPICS) -> dict[str, int]:
    """Create the product's topics with explicit partition counts (never rely on auto-creation);
    return each topic's partition count."""
    client = admin(bootstrap)
    try:
        existing = set(client.list_topics())
        missing = {t: {"num_partitions": params.partitions, "replication_factor": params.replication_factor}
                   for t in topics if t not in existing}
        if missing:
            client.create_topics(missing, raise_errors=False, wait_for_metadata=True, timeout_ms=10000)
            log.info("created topics %s with %d partitions", ", ".join(missing), params.partitions)
        return partition_counts(client, topics)
    finally:
        client.close()


def partition_counts(client, topics) -> dict[str, int]:
    described = client.describe_topics(list(topics))
    return {d.get("name", d.get("topic")): len(d["partitions"]) for d in described}


def wait_for_broker(bootstrap: str, timeout_s: float = 15.0) -> None:
    """Until the broker answers a Kafka-level request (list topics)."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client = admin(bootstrap)
            client.list_topics()
            client.close()
            return
        except Exception as exc:  # not up yet
            last = exc
            time.sleep(0.2)
    raise ServiceError(f"Kafka at {bootstrap} did not answer within {timeout_s:g} s ({last})")
