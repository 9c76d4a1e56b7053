"""What only Apache Kafka can show: exactly-once under a SIGKILL, a 3-broker cluster losing a
partition leader, a broker restart that keeps topics and committed offsets, and Kafka's own CLI
tools reading our topics as foreign clients. (The shared serving tests run on both brokers.)"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import TopicPartition

from neuropredict import apache_kafka, brokers, kafka_io, messages, procs
from neuropredict.errors import ServiceError
from neuropredict.settings.contracts import Topics
from neuropredict.settings.schema import load_params
from tests.conftest import (
    BIN,
    TINY_PARAMS,
    Stream,
    copy_project,
    copy_with_params,
    distinct_ports,
    project_env,
    require_apache_kafka,
    run,
    write_params,
)
from neuropredict.forecaster import Forecaster
from tests.integration.kafka_helpers import (
    Sender,
    assert_bounds_match,
    assert_forecasts_match,
    expected_bounds,
    expected_forecasts,
    TopicCounter,
    WorkerThread,
    committed_offsets,
    dead_letters,
    inputs,
    positions,
    predictions,
    publish,
    replay,
    serve_until_covered,
    wait_for,
    warmup_positions,
    worker_process,
)

pytestmark = pytest.mark.slow


def _open_transaction(stream) -> bool:
    """Whether the predictions topic holds records of a transaction not yet committed or aborted:
    its high watermark is past its last stable offset (Apache Kafka answers both correctly)."""
    ends = {}
    for isolation in ("read_uncommitted", "read_committed"):
        c = kafka_io.consumer(None, stream.bootstrap, isolation_level=isolation)
        try:
            parts = [TopicPartition(stream.topics.predictions, p) for p in range(4)]
            ends[isolation] = c.end_offsets(parts)
        finally:
            c.close()
    return any(ends["read_uncommitted"][tp] > ends["read_committed"][tp] for tp in ends["read_committed"])


def _freeze_mid_transaction(proc: subprocess.Popen, stream, tries: int = 200) -> None:
    """SIGSTOP the worker at a moment when its batch's forecasts are on the broker, uncommitted."""
    for _ in range(tries):
        os.kill(proc.pid, signal.SIGSTOP)
        if _open_transaction(stream):
            return
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.005)  # let it run a little: the next try catches another moment of its loop
    raise AssertionError(f"never caught the worker inside a transaction in {tries} tries")


def _console_count(stream, topic: str, isolation: str) -> int:
    """Records kafka-console-consumer (Kafka's own Java client) reads from the beginning."""
    out = apache_kafka.run_tool("kafka-console-consumer", "--bootstrap-server", stream.bootstrap, "--topic", topic,
                                "--from-beginning", "--isolation-level", isolation, "--timeout-ms", "5000")
    return len(out.splitlines())


def _group_lag(stream) -> dict[int, int]:
    """LAG per input partition, as kafka-consumer-groups --describe prints it."""
    group = stream.topics.group
    out = apache_kafka.run_tool("kafka-consumer-groups", "--bootstrap-server", stream.bootstrap, "--describe",
                                "--group", group)
    rows = [line.split() for line in out.splitlines() if line.startswith(group)]
    return {int(r[2]): int(r[5]) for r in rows if r[1] == stream.topics.prices}


def test_a_worker_sigkilled_mid_transaction_is_fenced_and_nothing_is_lost_or_seen_twice(
        trained_project, tmp_path, apache_stream):
    # small batches: many transactions
    root, params = copy_with_params(trained_project, tmp_path / "copy", {"serving": {"max_poll_records": 40}})
    stream = apache_stream
    # the same worker name after the restart: its first transaction fences the killed one's
    env = {**project_env(root), "NEUROPREDICT_WORKER_ID": "worker-a"}
    ticks = replay(root, params, start="2022-06-01")
    publish(stream, ticks, serving=params.serving)  # a backlog: always mid-batch
    log_path = tmp_path / "first.log"
    first = worker_process(root, env, stream, log_path, "--idle-timeout-s", "30")
    try:
        published = TopicCounter(stream, stream.topics.predictions)
        wait_for(lambda: published() > 100, 240, every_s=0.05, what="the first worker's first committed batches")
        assert "exactly-once" in log_path.read_text()
        _freeze_mid_transaction(first, stream)
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    left_open = len(read_topic_uncommitted(stream)) - len(predictions(stream))
    assert left_open > 0  # the killed batch's forecasts reached the broker, uncommitted

    serve_until_covered(root, env, stream, params.featurize.window, tmp_path / "second.log")

    found = inputs(stream)
    where = positions(predictions(stream))
    warm = warmup_positions(found, params.featurize.window)
    assert len(found) == len(ticks)
    assert len(where) == len(set(where))  # 0 duplicates for read_committed readers
    assert set(where) | warm == set(found) and not set(where) & warm  # 0 lost
    assert len(read_topic_uncommitted(stream)) > len(where)  # the aborted batch is in the log, skipped

    # Kafka's own tools agree: the Java consumer sees each forecast once, the group has no lag
    assert _console_count(stream, stream.topics.predictions, "read_committed") == len(where)
    assert _console_count(stream, stream.topics.predictions, "read_uncommitted") > len(where)
    assert _group_lag(stream) == {p: 0 for p in range(4)}
    described = apache_kafka.run_tool("kafka-topics", "--bootstrap-server", stream.bootstrap, "--describe")
    for topic in stream.topics.all:
        assert re.search(rf"Topic: {re.escape(topic)}\tTopicId: \S+\tPartitionCount: 4\tReplicationFactor: 1",
                         described)


def test_a_transaction_holds_the_batches_of_its_commit_interval_and_a_stop_commits_the_open_one(
        trained_project, tmp_path, apache_stream, use_project):
    root, params = copy_with_params(trained_project, tmp_path / "copy",
                                    {"serving": {"max_poll_records": 20, "commit_interval_ms": 1000}})
    use_project(root)
    stream = apache_stream
    ticks = replay(root, params, start="2024-09-01", symbols=["AAPL", "MSFT"])
    w = WorkerThread(params, stream)
    assert w.worker.guarantee == "exactly_once"
    wait_for(lambda: len(w.owned()) == 4, what="the worker to own the partitions")
    feed = Sender(ticks, stream, rate=100, serving=params.serving)
    feed.start()
    feed.join(120)
    wait_for(lambda: w.stats.polled >= len(ticks), what="every tick to be polled")
    w.stop()  # most likely inside a transaction: the stop commits it
    transactions, batches = w.worker.delivery.transactions, w.stats.batches
    print(f"{batches} batches in {transactions['committed']} transactions over {len(ticks) / 100:.1f} s")
    assert transactions["aborted"] == 0 and w.stats.consumed == len(ticks)
    assert transactions["committed"] <= batches / 4  # several polls per transaction, not one each
    found, where = inputs(stream), positions(predictions(stream))
    warm = warmup_positions(found, params.featurize.window)
    assert len(where) == len(set(where)) and set(where) | warm == set(found)  # each forecast once, none lost


def test_a_transaction_over_several_polls_commits_the_offsets_of_what_it_sent_not_of_the_next_poll(
        trained_project, apache_stream):
    """With a commit interval the commit comes after the next poll: its batch is not sent yet, so
    its offsets must not be in the transaction (a kill before the next commit would lose it)."""
    from neuropredict.stream.delivery import Delivery
    from neuropredict.stream.stats import LiveStats

    stream, params = apache_stream, load_params(trained_project / "params.yaml")
    publish(stream, replay(trained_project, params, start="2024-06-01", symbols=["AAPL"]), serving=params.serving)
    consumer = kafka_io.consumer(stream.topics.group, stream.bootstrap, max_poll_records=10)
    consumer.subscribe([stream.topics.prices])
    delivery = Delivery(lambda: kafka_io.producer(stream.bootstrap, params.serving, transactional_id=f"{stream.topics.group}-t"),
                        consumer, True, 30.0, stream.topics, commit_interval_s=60.0)
    try:
        first = {}
        wait_for(lambda: first.update(consumer.poll(timeout_ms=500)) or first, what="a first batch")
        delivery.begin()
        delivery.publish([(r.key, r.value) for records in first.values() for r in records])
        delivery.hold(("first batch",))
        sent = {tp.partition: consumer.position(tp) for tp in consumer.assignment()}
        wait_for(lambda: consumer.poll(timeout_ms=500), what="the next poll")  # read, not sent
        assert {tp.partition: consumer.position(tp) for tp in consumer.assignment()} != sent
        assert delivery.settle(LiveStats(), count=lambda *held: None) is None
        assert {p: o for p, o in committed_offsets(stream).items() if o} == {p: o for p, o in sent.items() if o}
    finally:
        kafka_io.close_quietly(delivery.producer, consumer)


def read_topic_uncommitted(stream) -> list:
    """The predictions topic as a read_uncommitted reader sees it: aborted records included."""
    with kafka_io.TopicReader(stream.bootstrap) as reader:
        reader.consumer.close()
        reader.consumer = kafka_io.consumer(None, stream.bootstrap, max_poll_records=50_000,
                                            isolation_level="read_uncommitted")
        return reader.read_all([stream.topics.predictions])


def test_up_down_up_keeps_topics_and_offsets_and_the_worker_resumes_where_it_committed(
        trained_project, tmp_path):
    require_apache_kafka()
    root = copy_project(trained_project, tmp_path / "copy")
    port = procs.free_port()
    env = {**project_env(root), "NEUROPREDICT_KAFKA_PORT": str(port)}
    neuropredict = [str(BIN / "neuropredict")]
    bootstrap = f"127.0.0.1:{port}"
    stream = Stream(brokers.ScratchBroker("apache", bootstrap, [], 1), Topics())  # started by `up` below
    params = load_params(root / "params.yaml")
    ticks = replay(root, params, start="2024-03-01")
    half = len(ticks) // 2
    try:
        up = run([*neuropredict, "up", "--broker", "apache", "--no-ui"], root, env)
        assert f"Kafka bootstrap: {bootstrap}" in up.stdout
        publish(stream, ticks[:half], serving=params.serving)
        run([*neuropredict, "serve", "--max-messages", str(half)], root, env, timeout=300)
        before = committed_offsets(stream)
        assert sum(before.values()) == half

        assert "stopped: kafka-1" in run([*neuropredict, "down"], root, env).stdout
        assert not procs.port_open("127.0.0.1", port)
        run([*neuropredict, "up", "--broker", "apache", "--no-ui"], root, env)
        status = run([*neuropredict, "status"], root, env).stdout
        assert f"stock_prices (4 partitions, group {stream.topics.group} committed {half}, lag 0)" in status
        assert committed_offsets(stream) == before  # the restart kept the group's offsets

        publish(stream, ticks[half:], serving=params.serving)
        found = inputs(stream)
        expected = expected_forecasts(found, Forecaster.load(root / "models/tuned/best"))
        # the input's history is gone (as retention would delete it): the state topic must restore it
        offsets = root / "delete.json"
        offsets.write_text(json.dumps({"version": 1, "partitions": [
            {"topic": stream.topics.prices, "partition": p, "offset": o} for p, o in before.items()]}))
        apache_kafka.run_tool("kafka-delete-records", "--bootstrap-server", bootstrap, "--offset-json-file", str(offsets))
        assert len(inputs(stream)) == len(ticks) - half
        second = run([*neuropredict, "serve", "--max-messages", str(len(ticks) - half)], root, env, timeout=300)
        assert "rebuilt" in second.stderr and " 0 warm-up" in second.stderr  # windows restored, not restarted
        assert "reading the input back" not in second.stderr

        outs = predictions(stream)
        where = positions(outs)
        assert len(where) == len(set(where))  # the second run resumed at the commits: nothing scored twice
        assert set(where) | warmup_positions(found, params.featurize.window) == set(found)
        assert len({o["worker"] for o in outs}) == 2  # both runs published (the second only the new half)
        later = [o for o in outs if (o["input_partition"], o["input_offset"]) not in set(before_positions(before, found))]
        assert len(later) == len(ticks) - half  # every tick of the second half forecast: 0 warm-up
        assert_forecasts_match(later, expected, rel=1e-9)
        # the online interval quantiles came back from the state topic too
        assert_bounds_match(later, expected_bounds(found, Forecaster.load(root / "models/tuned/best")))
    finally:
        run([*neuropredict, "down"], root, env, check=False)


def before_positions(committed: dict[int, int], found: dict) -> list[tuple[int, int]]:
    """The input positions before the committed offsets."""
    return [(p, o) for p, o in found if o < committed.get(p, 0)]


def test_a_node_that_cannot_start_says_why_in_one_line(tmp_path):
    """The reason is in the error, not only in the node's log (which CI does not keep)."""
    require_apache_kafka()
    port, controller_port = procs.free_ports(2)
    cluster = apache_kafka.Cluster.layout(tmp_path / "kafka", [port], [controller_port])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", controller_port))
        taken.listen()
        with pytest.raises(ServiceError) as failed:
            brokers.start_apache_kafka(cluster)
    message = str(failed.value)
    assert "\n" not in message and "kafka-1 exited at start" in message
    assert f"failed to bind to 127.0.0.1:{controller_port}: Address already in use" in message


def test_brokers_and_tools_map_the_class_archive_of_the_fetched_jars(tmp_path):
    """`make kafka` (and the first fetch) leaves an archive of Kafka's classes beside the jars;
    nodes and tools map it (-Xshare:on fails when an archive cannot be mapped)."""
    require_apache_kafka()
    folder = apache_kafka.libs()
    apache_kafka.build_class_archive(folder)  # nothing to do after `make test`'s `make kafka` step
    archive = apache_kafka.class_archive(folder)
    assert archive.is_file() and archive.stat().st_size > 1_000_000
    option = f"-XX:SharedArchiveFile={archive}"
    cluster = apache_kafka.Cluster.layout(tmp_path / "kafka", [1], [2])
    assert option in cluster.command(cluster.nodes[0]) and option in apache_kafka.tool_command("kafka-topics")
    mapped = subprocess.run([apache_kafka.java(), "-Xshare:on", option, "-cp", apache_kafka.classpath(),
                             apache_kafka.TOOLS["kafka-storage"], "random-uuid"], capture_output=True, text=True)
    assert mapped.returncode == 0 and len(mapped.stdout.strip()) == 22, mapped.stdout + mapped.stderr


@dataclass
class CliCluster:
    root: Path
    env: dict
    first_port: int
    up: str  # what `up --brokers 3` printed

    def cli(self, *args: str) -> str:
        return run([str(BIN / "neuropredict"), *args], self.root, self.env).stdout

    @property
    def stream(self) -> Stream:
        """The product's default topics (3 replicas each, min.insync.replicas 2) as `up` made them."""
        started = procs.load_table(self.root / ".neuropredict" / "services.json")
        nodes = [svc for name, svc in sorted(started.items()) if name.startswith("kafka-")]
        return Stream(brokers.ScratchBroker("apache", ",".join(s.url for s in nodes), nodes, 3), Topics())


SPARE = Topics("spare.")


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory):
    """`neuropredict up --brokers 3`: three KRaft nodes for this module's tests, in order: status
    describes them, then one is SIGKILLed under load; `down` stops the ones still running."""
    require_apache_kafka()
    root = tmp_path_factory.mktemp("cluster") / "p"
    root.mkdir()
    write_params(root, TINY_PARAMS)
    first, _ = distinct_ports(kafka_nodes=3)
    env = {**project_env(root), "NEUROPREDICT_KAFKA_PORT": str(first)}
    cluster = CliCluster(root, env, first, "")
    try:
        cluster.up = cluster.cli("up", "--brokers", "3", "--no-ui")
        # the topics the one-node-down test uses, made while all three nodes run (as in production)
        cluster.stream.broker.create(load_params(root / "params.yaml").kafka, SPARE)
        yield cluster
    finally:
        running = {name for name, svc in procs.load_table(root / ".neuropredict" / "services.json").items()
                   if svc.alive()}
        stopped = run([str(BIN / "neuropredict"), "down"], root, env, check=False).stdout
    assert f"stopped: {', '.join(sorted(running))}" in stopped  # down stops every node still running
    assert not any(procs.port_open("127.0.0.1", first + i) for i in range(3))


def test_up_brokers_3_starts_a_replicated_cluster_that_status_describes(cli_cluster):
    bootstrap = ",".join(f"127.0.0.1:{cli_cluster.first_port + i}" for i in range(3))
    assert f"Kafka bootstrap: {bootstrap}" in cli_cluster.up
    status = cli_cluster.cli("status")
    assert "brokers    1, 2, 3" in status
    rows = re.findall(r"\[(\d)\] leader (\d)  replicas \[([\d, ]+)\]", status)
    assert len(rows) == 4 * (len(Topics().all) + len(SPARE.all))  # every partition of every topic: 3 replicas
    assert all(len(replicas.split(",")) == 3 for _, _, replicas in rows)
    assert len({leader for _, leader, _ in rows}) > 1  # leadership is spread over the nodes
    assert procs.load_table(cli_cluster.root / ".neuropredict" / "services.json").keys() == {
        "kafka-1", "kafka-2", "kafka-3"}


def test_a_3_broker_cluster_keeps_scoring_when_a_partition_leader_is_killed(
        trained_project, use_project, cli_cluster):
    use_project(trained_project)
    stream = cli_cluster.stream
    params, bootstrap = load_params(trained_project / "params.yaml"), stream.bootstrap
    described = apache_kafka.run_tool("kafka-topics", "--bootstrap-server", bootstrap, "--describe",
                                      "--topic", stream.topics.prices)
    assert "ReplicationFactor: 3" in described and "min.insync.replicas=2" in described
    ticks = replay(trained_project, params, start="2023-06-01")
    w = WorkerThread(params, stream)
    wait_for(lambda: len(w.owned()) == 4, what="the worker to own the partitions")
    sender = Sender(ticks, stream, rate=250, serving=params.serving)
    sender.start()
    wait_for(lambda: w.stats.predicted > 100, what="the first forecasts")
    # as an operator would before taking a broker down: no partition under-replicated, internal ones
    # included (the group's offsets and the transaction log were created moments ago, by the worker)
    kafka_io.wait_fully_replicated(bootstrap)
    leader = kafka_io.partition_leader(bootstrap, stream.topics.prices, 0)
    open_transaction = _transaction_coordinated_by(leader, bootstrap, params, stream.topics.shadow_predictions)
    killed = next(svc for svc in stream.broker.services if svc.name == f"kafka-{leader}")
    os.killpg(killed.pid, signal.SIGKILL)
    # its coordinator died: it commits once the node is fenced and another one took over (kafka-python
    # alone dropped the request and waited out max_block_ms: kafka_io._coordinator_client)
    open_transaction.commit_transaction()
    open_transaction.close()
    with kafka_io.TopicReader(bootstrap) as reader:
        assert b"committed after its coordinator died" in [r.value for r in reader.read_all([stream.topics.shadow_predictions])]
    sender.join()
    wait_for(lambda: w.stats.consumed >= len(ticks), timeout_s=180, what="every input to be consumed")
    w.stop()
    assert w.worker.guarantee == "exactly_once"
    assert kafka_io.partition_leader(bootstrap, stream.topics.prices, 0) not in (leader, -1)  # another replica took over

    found = inputs(stream)
    sent = {(t.symbol, t.timestamp) for t in ticks}
    arrived = [(t.symbol, t.timestamp) for t in found.values() if not isinstance(t, str)]
    assert set(arrived) == sent  # 0 inputs lost (acks=all, 2 replicas in sync)
    where = positions(predictions(stream))
    dead = {(int(messages.header_dict(r.headers)["source_partition"]),
             int(messages.header_dict(r.headers)["source_offset"])): messages.header_dict(r.headers)["reason"]
            for r in dead_letters(stream)}
    assert len(where) == len(set(where))  # 0 duplicates for read_committed readers
    assert set(where) | set(dead) | warmup_positions(found, params.featurize.window) == set(found)
    # a tick the feed re-sent during the failover is a duplicate input, dead-lettered as one
    assert all(reason.startswith("duplicate") for reason in dead.values()), dead
    assert len(arrived) - len(sent) == len(dead)




def _transaction_coordinated_by(node: int, bootstrap: str, params, topic: str):
    """A worker's transactional producer whose transaction coordinator is on `node`, with a
    transaction open that holds one record: the coordinator of an id is the leader of its
    partition of __transaction_state (Java's hashCode, as Kafka, over 8 partitions: apache_kafka)."""
    leaders = {p: kafka_io.partition_leader(bootstrap, "__transaction_state", p) for p in range(8)}
    for i in range(200):
        tid = f"coordinated-{i}"
        code = 0
        for ch in tid:
            code = (31 * code + ord(ch)) & 0xFFFFFFFF
        if leaders[abs(code - (1 << 32) if code >= 1 << 31 else code) % 8] == node:
            # time enough for the fencing (~9 s): the broker would abort a transaction older than 10 s
            made = kafka_io.producer(bootstrap, params.serving, transactional_id=tid, transaction_timeout_ms=60_000,
                                     max_block_ms=30_000)
            made.begin_transaction()
            made.send(topic, value=b"committed after its coordinator died", partition=0).get(timeout=10)
            return made
    raise AssertionError(f"no transactional id has its coordinator on node {node}")


def test_with_one_node_of_three_down_every_command_works_and_up_brings_it_back(
        trained_project, cli_cluster, tmp_path):
    """A node SIGKILLed: a worker starts and scores exactly-once, produce, evaluate, status,
    compare and check-parity work or say why in one line; `up` run again restarts the node on its data and
    returns once every replica is back in sync."""
    def nodes() -> dict:
        return procs.load_table(cli_cluster.root / ".neuropredict" / "services.json")

    def up_again(dead: str) -> None:
        out = run([str(BIN / "neuropredict"), "up", "--brokers", "3", "--no-ui"], cli_cluster.root,
                  cli_cluster.env, check=False)
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert f"restarted {dead} on its own data" in out.stderr
        assert all(svc.alive() for svc in nodes().values()) and len(nodes()) == 3
        assert kafka_io.under_replicated(cli_cluster.stream.bootstrap) == []  # internal topics too

    dead = [name for name, svc in nodes().items() if not svc.alive()]
    victim = dead[0] if dead else "kafka-3"  # the node the test before killed, else one now
    if not dead:
        os.killpg(nodes()[victim].pid, signal.SIGKILL)
        wait_for(lambda: not nodes()[victim].alive(), what="the node to die")
    bootstrap = cli_cluster.stream.bootstrap
    stream = Stream(cli_cluster.stream.broker, SPARE)  # 3 replicas, made while all nodes ran

    env = {**project_env(trained_project), **stream.env(), "KAFKA_BOOTSTRAP_SERVERS": bootstrap}

    def cli(*args, timeout=300):
        proc = subprocess.run([str(BIN / "neuropredict"), *args], cwd=trained_project, env=env,
                              capture_output=True, text=True, timeout=timeout)
        assert "Traceback" not in proc.stderr, (args, proc.stderr[-3000:])
        return proc

    produced = cli("produce", "--start", "2024-11-01", "--limit", "60")
    assert produced.returncode == 0, produced.stderr[-2000:]
    log_path = tmp_path / "serve.log"  # started after produce: its idle timeout cannot beat a slow produce
    worker = worker_process(trained_project, env, stream, log_path, "--idle-timeout-s", "10")
    try:
        wait_for(lambda: len(predictions(stream)) >= 60 - 2 * 10 and worker.poll() is not None, timeout_s=180,
                 what="the worker to score the ticks and go idle")
        assert "assigned partitions" in log_path.read_text() and "(exactly-once)" in log_path.read_text()
        assert worker.returncode == 0 and "Traceback" not in log_path.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
    evaluated = cli("evaluate", "--no-mlflow")
    assert evaluated.returncode == 0 and "persistence" in evaluated.stdout, evaluated.stderr[-2000:]
    status = cli("status")
    alive = ", ".join(name.removeprefix("kafka-") for name in sorted(nodes()) if name != victim)
    assert status.returncode == 0 and f"brokers    {alive} (controller " in status.stdout, status.stdout[-2000:]
    assert f"fenced (down): {victim.removeprefix('kafka-')})" in status.stdout
    compared = cli("compare", "--no-mlflow")  # no challenger in this project: one line says what to do
    assert compared.returncode in (0, 1) and len(compared.stderr.strip().splitlines()) <= 1, compared.stderr
    parity = cli("check-parity")  # on its own private broker: the degraded cluster is not in its way
    assert parity.returncode == 0 and "PASS" in parity.stdout, parity.stdout[-2000:] + parity.stderr[-2000:]
    up_again(victim)
