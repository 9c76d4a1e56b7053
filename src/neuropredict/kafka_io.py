"""kafka-python clients with settings that work on the embedded broker and on Apache Kafka alike,
and the one reader of "the records of a partition between two offsets"."""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from neuropredict import console, procs, retry
from neuropredict.errors import ServiceError
from neuropredict.settings import environment
from neuropredict.settings.contracts import Topics
from neuropredict.settings.schema import KafkaParams, ServingParams

log = logging.getLogger(__name__)

# ---- fixed by the brokers and the client we run on: not knobs to tune ----
# Session 6000 / heartbeat 2000: the smallest a default Apache Kafka accepts. The embedded broker
# holds a group join until half the session timeout has passed: ~3 s here, ~23 s with the defaults.
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 2000
MAX_POLL_INTERVAL_MS = 300_000  # a batch (model call included) must finish well within this
BOOTSTRAP_TIMEOUT_MS = 10_000   # how long a client waits for the first broker answer
CONSUMER_REQUEST_TIMEOUT_MS = 30_000
PRODUCER_REQUEST_TIMEOUT_MS = 10_000  # capped by serving.delivery_timeout_ms
# A transactional request (a commit takes ~35 ms) that gets no answer is given up after this and
# the coordinator looked up again (the default 30 s outlasts a dead broker's fencing, ~9 s).
TRANSACTIONAL_REQUEST_TIMEOUT_MS = 3_000
# init_transactions (a new producer after a failed batch) waits at most this long; then the rewind
# tries a new one. A coordinator that died is replaced once KRaft fenced its broker (~9 s).
TRANSACTIONAL_MAX_BLOCK_MS = 15_000
# A worker that dies mid-transaction leaves it open; the broker aborts it after this. Until then
# read_committed readers of its partitions wait, and so does the worker taking them over (unless
# it has the same NEUROPREDICT_WORKER_ID, which aborts it at once). A batch must fit well within.
TRANSACTION_TIMEOUT_MS = 10_000
READ_RANGE_TIMEOUT_S = 30.0  # reading a partition back (restore, evaluate) gives up after this
QUIET_S = 0.5  # a reader's partition that has not moved for this long is at its last stable offset

GROUP_SETTINGS = dict(session_timeout_ms=SESSION_TIMEOUT_MS, heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
                      max_poll_interval_ms=MAX_POLL_INTERVAL_MS)


class _OneLine(logging.Filter):
    """kafka-python logs a lost connection (a broker down) with its whole traceback: an operator
    needs the one line, and `--verbose` keeps the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and not os.environ.get("NEUROPREDICT_VERBOSE"):
            error = record.exc_info[1]
            record.msg, record.args = f"{record.getMessage()} ({type(error).__name__}: {error})", ()
            record.exc_info = record.exc_text = None
        return True


# the kafka-python modules that log with a traceback (a filter applies to its own logger only)
for _name in ("kafka.net.transport", "kafka.net.connection", "kafka.net.selector", "kafka.cluster", "kafka.future",
              "kafka.consumer.fetcher", "kafka.coordinator.consumer", "kafka.producer.sender"):
    logging.getLogger(_name).addFilter(_OneLine())


class _QuietBootstrap:
    """While a client connects for the first time, kafka-python logs every refused connection
    (four lines a try); when no broker answers, the one-line error below says so, with the fix.
    Its `kafka.net` loggers are muted meanwhile (counted: clients may connect from several threads)."""

    _lock, _depth = threading.Lock(), 0

    def __enter__(self) -> None:
        with self._lock:
            type(self)._depth += 1
            if not console.verbose():  # --verbose: every library line
                logging.getLogger("kafka.net").setLevel(logging.CRITICAL)

    def __exit__(self, *exc) -> None:
        with self._lock:
            type(self)._depth -= 1
            if not self._depth:
                logging.getLogger("kafka.net").setLevel(logging.NOTSET)


def _unreachable(bootstrap: str, exc: Exception) -> ServiceError:
    hint = ("start the embedded broker with `neuropredict up`" if not environment.kafka_is_external()
            else "check KAFKA_BOOTSTRAP_SERVERS")
    return ServiceError(f"cannot reach Kafka at {bootstrap} ({type(exc).__name__}): {hint}")


def producer(bootstrap: str | None = None, serving: ServingParams | None = None,
             transactional_id: str | None = None, **overrides: Any):
    """A producer tuned for throughput, idempotent where the broker keeps producer state.

    Idempotence keeps a symbol's ticks in order when a send is retried (a leader moved: measured
    on a 3-broker Apache Kafka, a plain producer's retried batch landed after later ones). The
    embedded broker forgets producer ids on restart and an idempotent producer then never
    recovers, so there it is off, and order holds except across a retry.
    With a transactional_id: transactional too, initialised (which fences an older producer of
    the same id and aborts what it left open)."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    bootstrap = bootstrap or environment.kafka_bootstrap()
    s = serving or ServingParams()
    settings: dict[str, Any] = dict(
        bootstrap_servers=bootstrap, acks="all", retries=5,
        enable_idempotence=bool(transactional_id) or supports_transactions(bootstrap),
        linger_ms=s.producer_linger_ms, batch_size=s.producer_batch_bytes,
        compression_type=None if s.compression == "none" else s.compression,
        delivery_timeout_ms=s.delivery_timeout_ms, bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        # a request may not outlive the delivery it belongs to (kafka-python checks this)
        request_timeout_ms=min(PRODUCER_REQUEST_TIMEOUT_MS, s.delivery_timeout_ms - s.producer_linger_ms),
        max_in_flight_requests_per_connection=5,
    )
    if transactional_id:
        settings.update(enable_idempotence=True, transactional_id=transactional_id, kafka_client=_coordinator_client(),
                        transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
                        request_timeout_ms=min(settings["request_timeout_ms"], TRANSACTIONAL_REQUEST_TIMEOUT_MS),
                        # begin/commit/abort/init wait at most this long (default 60 s)
                        max_block_ms=min(s.delivery_timeout_ms, TRANSACTIONAL_MAX_BLOCK_MS))
    settings.update(overrides)
    try:
        with _QuietBootstrap():
            made = KafkaProducer(**settings)
        if transactional_id:
            made.init_transactions()
        return made
    except KafkaError as exc:
        raise _unreachable(bootstrap, exc) from None


@functools.cache
def _coordinator_client() -> type:
    """kafka-python's network client, but a transaction coordinator that cannot be reached is
    "not ready" (False) instead of an exception. kafka-python 3.0.12's sender drops the
    transactional request on that exception (Sender._maybe_send_pending_request re-enqueues it
    only when await_ready returns False): when a broker holding a coordinator died, init, commit
    and abort then waited forever. With False it looks the coordinator up again and retries, as
    the Java client does, and the transaction goes on once the broker is fenced (~9 s)."""
    from kafka.errors import KafkaConnectionError
    from kafka.net.compat import KafkaNetClient

    class CoordinatorClient(KafkaNetClient):
        def await_ready(self, node_id, timeout_ms=30000):
            try:
                return super().await_ready(node_id, timeout_ms=timeout_ms)
            except KafkaConnectionError:
                return False

    return CoordinatorClient


def consumer(group: str | None, bootstrap: str | None = None, max_poll_records: int = 500,
             **overrides: Any):
    """A consumer that commits only when told to (after its outputs are acknowledged)."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    bootstrap = bootstrap or environment.kafka_bootstrap()
    settings: dict[str, Any] = dict(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest",
        # every reader skips what an aborted transaction wrote (the worker writes exactly-once)
        isolation_level="read_committed",
        max_partition_fetch_bytes=8 * 1024 * 1024, max_poll_records=max_poll_records,
        bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS, request_timeout_ms=CONSUMER_REQUEST_TIMEOUT_MS,
    )
    if group:
        settings.update(GROUP_SETTINGS)
    settings.update(overrides)
    try:
        with _QuietBootstrap():
            return KafkaConsumer(**settings)
    except KafkaError as exc:
        raise _unreachable(bootstrap, exc) from None


def admin(bootstrap: str | None = None):
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    bootstrap = bootstrap or environment.kafka_bootstrap()
    try:
        with _QuietBootstrap():
            return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000,
                                bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
    except KafkaError as exc:
        raise _unreachable(bootstrap, exc) from None


# The input's retention bounds replays only (a worker restores from the state topic): 30 days keep a
# month of ticks for `retrain`, `evaluate` and `compare`, where Kafka's default keeps 7.
INPUT_RETENTION_MS = 30 * 24 * 3600 * 1000


def topic_configs(topics: Topics) -> dict[str, dict[str, str]]:
    """Configurations beyond the broker's defaults, per topic. The state topic is compacted (the
    newest record per symbol stays), with 10-minute segments and a low dirty ratio so the log a
    restore reads stays near one record per symbol (the active segment is never compacted)."""
    return {topics.prices: {"retention.ms": str(INPUT_RETENTION_MS)},
            topics.serving_state: {"cleanup.policy": "compact", "segment.ms": "600000",
                                   "min.cleanable.dirty.ratio": "0.1"}}


def ensure_topics(params: KafkaParams, bootstrap: str | None, topics: Topics | Iterable[str],
                  replication: int | None = None) -> dict[str, int]:
    """Create the product's topics (a Topics value, with their configurations) or other named
    ones, with explicit partition counts (never rely on auto-creation); return each topic's
    partition count. With 3 replicas or more, acks=all waits for 2 of them: a write then
    survives the loss of any one broker."""
    replication = replication or params.replication_factor
    base = {"min.insync.replicas": "2"} if replication >= 3 else {}
    configs = topic_configs(topics) if isinstance(topics, Topics) else {}
    names = topics.all if isinstance(topics, Topics) else tuple(topics)
    client = admin(bootstrap)
    try:
        existing = set(client.list_topics())
        missing = {t: {"num_partitions": params.partitions, "replication_factor": replication,
                       "configs": {**base, **configs.get(t, {})}} for t in names if t not in existing}
        if missing:
            client.create_topics(missing, raise_errors=False, wait_for_metadata=True, timeout_ms=10000)
            log.info("created topics %s with %d partitions, %d replicas", ", ".join(missing), params.partitions,
                     replication)
        return partition_counts(client, names)
    finally:
        client.close()


def partition_leader(bootstrap: str, topic: str, partition: int) -> int:
    """The broker leading a partition now (-1: none)."""
    client = admin(bootstrap)
    try:
        (described,) = client.describe_topics([topic])
        return next(p["leader_id"] for p in described["partitions"] if p["partition_index"] == partition)
    finally:
        client.close()


def require_state_topic(bootstrap: str, topics: Topics) -> None:
    """The state topic exists with the input's partition count (a symbol's state goes to its input
    partition's number); else a ServiceError saying how to create it."""
    client = admin(bootstrap)
    try:
        existing = set(client.list_topics())
        missing = [t for t in (topics.prices, topics.serving_state) if t not in existing]
        if missing:
            raise ServiceError(f"topic {missing[0]} does not exist on {bootstrap}: create the topics with "
                               f"`neuropredict up` (compose: the kafka-init service)")
        counts = partition_counts(client, [topics.prices, topics.serving_state])
    finally:
        client.close()
    if counts[topics.prices] != counts[topics.serving_state]:
        raise ServiceError(f"{topics.serving_state} has {counts[topics.serving_state]} partitions and {topics.prices} "
                           f"{counts[topics.prices]}: they must match; delete {topics.serving_state} and create it "
                           f"again with {counts[topics.prices]} (compacted: kafka_io.topic_configs)")


def cluster_size(bootstrap: str) -> int:
    """Brokers the cluster reports ready (unfenced; 0 while it does not answer)."""
    from kafka.errors import KafkaError

    try:
        client = admin(bootstrap)
    except ServiceError:
        return 0
    try:  # a fenced broker is registered but may not lead or follow yet
        return sum(not b.get("is_fenced") for b in client.describe_cluster()["brokers"])
    except KafkaError:
        return 0
    finally:
        client.close()


def under_replicated(bootstrap: str, topics: list[str] | None = None) -> list[str]:
    """Partitions (of `topics`, default: all, internal ones included) whose in-sync replicas are
    fewer than their replicas: losing their leader now could take them offline."""
    client = admin(bootstrap)
    try:
        described = client.describe_topics(topics)  # None: every topic
    finally:
        client.close()
    return [f"{d['name']}[{p['partition_index']}]" for d in described for p in d["partitions"]
            if len(p["isr_nodes"]) < len(p["replica_nodes"])]


def wait_fully_replicated(bootstrap: str, topics: list[str] | None = None, timeout_s: float = 60.0) -> None:
    """Until every partition has all its replicas in sync (a new topic's followers catch up)."""
    from kafka.errors import KafkaError

    lagging: list[str] = []
    seen: list[bool] = []

    def in_sync() -> bool:  # twice in a row: a broker's metadata may show an ISR a moment early
        try:
            lagging[:] = under_replicated(bootstrap, topics)
        except KafkaError:  # the broker answering dropped the connection (a node restarting): ask again
            lagging[:] = ["(no answer)"]
        seen.append(not lagging)
        return seen[-2:] == [True, True]

    try:
        retry.wait_until(in_sync, timeout_s, "replicas to catch up", every_s=0.5)
    except ServiceError:
        raise ServiceError(f"{len(lagging)} partitions still have replicas out of sync after {timeout_s:g} s "
                           f"(e.g. {', '.join(lagging[:3])}): see the broker logs") from None


def supports_transactions(bootstrap: str) -> bool:
    """Whether the broker isolates transactions (and keeps producer state). The embedded broker
    accepts the transactional calls but delivers aborted records to read_committed readers; it
    also lacks the transaction admin APIs (ListTransactions), which is what this checks."""
    from kafka.errors import IncompatibleBrokerVersion, KafkaError

    client = admin(bootstrap)
    try:  # one broker that answers is enough: with a node of a cluster down, asking all would fail
        nodes = [b["broker_id"] for b in client.describe_cluster()["brokers"] if not b.get("is_fenced")]
        for node in nodes:
            try:
                client.list_transactions(broker_ids=[node])
                return True
            except IncompatibleBrokerVersion:
                return False
            except KafkaError as exc:
                log.debug("broker %s did not answer ListTransactions: %s", node, exc)
        raise ServiceError(f"no broker of {bootstrap} answered (of {len(nodes)} it lists): see `neuropredict status`")
    finally:
        client.close()


def high_watermarks(partitions: list, bootstrap: str | None = None) -> dict:
    """Each partition's end (the high watermark a fetch reports; never `end_offsets()`, which the
    embedded broker answers wrongly)."""
    if not partitions:
        return {}
    with TopicReader(bootstrap) as reader:
        return reader.high_watermarks(partitions)


def partition_counts(client, topics) -> dict[str, int]:
    described = client.describe_topics(list(topics))
    return {d.get("name", d.get("topic")): len(d["partitions"]) for d in described}


def answers(bootstrap: str) -> bool:
    """Whether the broker answers a Kafka-level request (list topics) now. Nothing listening on any
    address is known at once (the client itself would try for ~10 s)."""
    addresses = [a.strip().rsplit(":", 1) for a in bootstrap.split(",") if ":" in a]
    if addresses and not any(procs.port_open(host, int(port)) for host, port in addresses if port.isdigit()):
        return False
    try:
        client = admin(bootstrap)
    except ServiceError:
        return False
    try:
        client.list_topics()
        return True
    except Exception:  # not up yet
        return False
    finally:
        client.close()


class TopicReader:
    """Reads topics outside any consumer group: the records of a partition between two offsets
    (restore, evaluate, the demo, tests). One consumer, reused from call to call.

    The end of a partition is the high watermark the broker reports with a fetch, not
    `end_offsets()`: the embedded broker answers that one wrongly (see KAFKA_NOTES)."""

    def __init__(self, bootstrap: str | None = None, max_poll_records: int = 50_000, isolated: bool = False):
        self.bootstrap = bootstrap or environment.kafka_bootstrap()
        # on a broker that isolates transactions, end_offsets() is the exact last stable offset
        self.isolated = isolated
        # a reader wants what is there now: a broker holding a fetch at a partition's end for more
        # data (500 ms by default) cost each restore of a partition about a second
        self.consumer = consumer(None, bootstrap, max_poll_records=max_poll_records, fetch_max_wait_ms=10)

    def fresh(self) -> TopicReader:
        """A new reader on the same cluster (it knows no partition's end yet)."""
        return TopicReader(self.bootstrap, isolated=self.isolated)

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def partitions(self, topics: Iterable[str]) -> list:
        from kafka import TopicPartition

        return [TopicPartition(t, p) for t in topics for p in sorted(self.consumer.partitions_for_topic(t) or [])]

    def high_watermarks(self, partitions: list, timeout_s: float = 10.0) -> dict:
        c = self.consumer
        c.assign(list(partitions))
        c.resume(*partitions)
        c.seek_to_end(*partitions)  # a fetch from near the end answers with the high watermark
        # not retry.wait_until: each turn is a fetch that may bring the answer (no sleep between)
        deadline, ends = time.monotonic() + timeout_s, {}
        while len(ends) < len(partitions) and time.monotonic() < deadline:
            c.poll(timeout_ms=20, max_records=1)  # the answer comes with the first fetch: ~10 ms
            ends.update({tp: c.highwater(tp) for tp in partitions if c.highwater(tp) is not None})
        return ends

    def _at_end(self, tp, stop: int, moved: dict) -> bool:
        """At the stop, or still for QUIET_S at the last stable offset: a read_committed reader
        gets nothing past it, and an open transaction (a worker's batch in flight) holds it below
        the high watermark until it commits or aborts."""
        position, now = self.consumer.position(tp, timeout_ms=1000), time.monotonic()
        if position >= stop:
            return True
        last, since = moved[tp]
        if position != last:
            moved[tp] = (position, now)
            return False
        # still: ask for the end a read_committed reader can reach (the LSO, on a broker that isolates
        # transactions: at once, where a busy partition's open transactions cost each read QUIET_S;
        # the embedded broker has none to wait for, so its readers reach the stop)
        quiet = self.isolated or now - since > QUIET_S
        return quiet and position >= self.consumer.end_offsets([tp]).get(tp, stop)

    def read_range(self, tp, lo: int, hi: int | None = None,
                   timeout_s: float = READ_RANGE_TIMEOUT_S) -> list:
        """Records of one partition with lo <= offset < hi (hi None: up to its current end)."""
        return [r for batch in self.read({tp: lo}, {tp: hi}, timeout_s) for r in batch]

    def read_all(self, topics: Iterable[str], timeout_s: float = 300.0) -> list:
        """Every record of the topics, from the beginning to their current end."""
        parts = self.partitions(topics)
        return [r for batch in self.read({tp: 0 for tp in parts}, {}, timeout_s) for r in batch]

    def read(self, starts: dict, stops: dict, timeout_s: float) -> Iterator[list]:
        """Batches of records from each partition's start to its stop (missing or None: its end
        when first seen by this call, so a busy topic is not chased). Gaps in the offsets
        (transaction markers) are stepped over. kafka-python keeps a partition's state, its last
        high watermark too, across assign() calls that both hold it: a second read of the same
        partitions on one reader should give its stops (or use a new reader)."""
        c = self.consumer
        c.assign(list(starts))
        c.resume(*starts)
        for tp, lo in starts.items():
            c.seek(tp, lo)
        stops = dict(stops)
        # a reading loop with a deadline, not a wait: each turn's poll brings records to yield
        open_parts, deadline = set(starts), time.monotonic() + timeout_s
        moved = {tp: (None, time.monotonic()) for tp in starts}  # last position seen, and since when
        while open_parts:
            if time.monotonic() > deadline:
                log.warning("reading %s timed out after %g s; some records were not read",
                            ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(open_parts)), timeout_s)
                return
            polled = c.poll(timeout_ms=200)
            for tp in open_parts:
                if stops.get(tp) is None:
                    stops[tp] = c.highwater(tp)  # None until the broker has answered a fetch
            for tp, records in polled.items():
                stop = stops.get(tp)
                batch = [r for r in records if stop is None or r.offset < stop]
                if batch:
                    yield batch
            done = {tp for tp in open_parts if stops.get(tp) is not None and self._at_end(tp, stops[tp], moved)}
            if done:
                c.pause(*done)  # fetch only what is still wanted
                open_parts -= done


def close_quietly(*clients) -> None:
    """Close each client that exists; closing is best-effort (a broker may be gone)."""
    for client in clients:
        if client is not None:
            try:
                client.close()
            except Exception as exc:
                log.debug("close: %s", exc)


def follow(bootstrap: str | None, topics: Iterable[str]) -> Iterator[list]:
    """The topics' records from the beginning, batch by batch as they arrive; an empty batch
    whenever it has caught up (so a caller can check its own condition). Never ends."""
    from kafka import TopicPartition

    topics = list(topics)
    with TopicReader(bootstrap) as reader:
        positions: dict = {}
        while True:
            for tp in reader.partitions(topics):  # topics and partitions may appear later
                positions.setdefault(tp, 0)
            if not positions:
                time.sleep(0.2)
            for batch in reader.read(dict(positions), {}, READ_RANGE_TIMEOUT_S):
                last = batch[-1]
                positions[TopicPartition(last.topic, last.partition)] = last.offset + 1
                yield batch
            yield []
