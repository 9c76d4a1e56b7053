"""`neuropredict up / down / status`: the local services for development, the demo and the team
path, started in order and recorded in .neuropredict/services.json.

`up` starts what is not running: a Kafka broker (the embedded Tansu, or Apache Kafka: one node or
a 3-node cluster; none when KAFKA_BOOTSTRAP_SERVERS names a real cluster), the MLflow UI on the
project's store or the team's tracking server, and compose's workers. `down` stops exactly what
`up` recorded. Apache Kafka keeps its data in .neuropredict/apache-kafka-N/: topics and committed
offsets survive `down` and `up`; Tansu keeps everything in memory.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from neuropredict import apache_kafka, brokers, kafka_io, monitoring, procs, retry, topology, tracking_server
from neuropredict.errors import ServiceError
from neuropredict.procs import Service
from neuropredict.settings import environment
from neuropredict.settings.contracts import Topics
from neuropredict.settings.paths import paths, project_root
from neuropredict.settings.schema import KafkaParams

log = logging.getLogger(__name__)


def load_state() -> dict[str, Service]:
    """What `up` started (alive or not)."""
    return procs.load_table(paths().services_file)


def running() -> dict[str, Service]:
    return {name: svc for name, svc in load_state().items() if svc.alive()}


def _save_state(services: dict[str, Service]) -> None:
    procs.save_table(paths().services_file, services)
    if "prometheus" in services:  # it finds the workers here (monitoring.start writes the file first)
        monitoring.write_targets(services)


def up(kafka: KafkaParams, topics: Topics, ui: bool = True, broker: str = "tansu", nodes: int = 1,
       tracking: str = "local", auth: bool = True, workers: int = 0, guard: bool = False,
       monitoring_on: bool = False) -> dict[str, Any]:
    """Start a local broker (unless a real cluster is configured) and the MLflow UI on the project's
    store, or (tracking="server") PostgreSQL and an MLflow server on it; create the topics; start
    `workers` serving workers configured as serving/compose.yaml configures its own (again, those
    that died); with `monitoring_on`, Prometheus scraping them. Services already running are left
    as they are; another kind of broker is refused."""
    if workers and tracking != "server":
        raise ServiceError("--workers starts compose's workers, which log to the tracking server: add --tracking server")
    recorded = load_state()  # the dead too: a worker started again keeps its metrics port
    services = {name: svc for name, svc in recorded.items() if svc.alive()}
    replication, restarted = _start_broker(services, kafka, broker, nodes)
    _save_state(services)
    partitions = kafka_io.ensure_topics(kafka, environment.kafka_bootstrap(), topics, replication=replication)
    if replication > 1 and not environment.kafka_is_external():  # ready: every replica of our topics in sync
        # after a restarted node: of every topic (offsets and transaction state too), so the cluster is whole
        kafka_io.wait_fully_replicated(environment.kafka_bootstrap(), None if restarted else list(topics.all),
                                       timeout_s=180.0 if restarted else 60.0)
    if tracking == "server":
        for svc in tracking_server.start(services, auth):
            services[svc.name] = svc
            log.info("%s on %s, pid %d", svc.name, svc.url, svc.pid)
    elif ui and not {"mlflow-ui", "mlflow-server"} & set(services) and not environment.tracking_uri().startswith("http"):
        services["mlflow-ui"] = tracking_server.start_mlflow_ui(environment.mlflow_ui_port(),
                                                                paths().state_dir / "mlflow-ui.log")
        log.info("MLflow UI on %s, pid %d", services["mlflow-ui"].url, services["mlflow-ui"].pid)
    _save_state(services)
    if workers:
        _start_workers(services, recorded, workers, topics.group)
    elif guard and "guard" not in services:
        services["guard"] = _start_guard()
    _save_state(services)
    if monitoring_on and "prometheus" not in services:
        services["prometheus"] = monitoring.start(environment.prometheus_port(), services)
        log.info("Prometheus on %s, pid %d, alert rules from serving/prometheus/alerts.yml",
                 services["prometheus"].url, services["prometheus"].pid)
        _save_state(services)
    return {"services": services, "topics": partitions, "bootstrap": environment.kafka_bootstrap(),
            "replication": replication}


def _start_workers(services: dict[str, Service], recorded: dict[str, Service], count: int, group: str) -> None:
    """compose's workers worker-1..count that are not running, each on the metrics port it had
    (`recorded`: Prometheus knows it by that address), and the rollback guard."""
    missing = [i for i in range(1, count + 1) if f"worker-{i}" not in services]
    addresses = {"kafka": environment.kafka_bootstrap(), "mlflow": services["mlflow-server"].url.removeprefix("http://")}
    if missing:
        had = {i: topology.metrics_port(recorded[f"worker-{i}"]) for i in missing if f"worker-{i}" in recorded}
        fresh = iter(procs.free_ports(len(missing) - len(had), avoid=had.values()))
        ports = {i: had.get(i) or next(fresh) for i in missing}
        for svc in topology.start_workers(ports, addresses, tracking_server.compose_variables(), group):
            services[svc.name] = svc
        log.info("serving workers %s started (configured from serving/compose.yaml)",
                 ", ".join(f"worker-{i}" for i in missing))
    if "guard" not in services:
        services["guard"] = topology.start_guard(addresses, tracking_server.compose_variables())


def _start_guard() -> Service:
    """`neuropredict guard` beside a worker run by hand, on this shell's Kafka and MLflow store."""
    log_path = paths().state_dir / "guard.log"
    proc = procs.spawn([sys.executable, "-m", "neuropredict.cli", "guard"], log_path, cwd=project_root())
    return procs.service("guard", proc, "rollback guard", log_path)


def _start_broker(services: dict[str, Service], kafka: KafkaParams, broker: str, nodes: int) -> tuple[int, bool]:
    """The local broker `up` asks for, unless it runs (a node of a cluster that died is started
    again, its data kept); the topics' replication factor on it, and whether a node was restarted."""
    if environment.kafka_is_external():
        log.info("KAFKA_BOOTSTRAP_SERVERS=%s: using that cluster, no local broker", environment.kafka_bootstrap())
        return kafka.replication_factor, False
    _refuse_another_broker(services, broker, nodes)
    if broker == "apache":
        cluster = brokers.local_cluster(nodes)
        dead = [n.node_id for n in cluster.nodes if f"kafka-{n.node_id}" not in services]
        if len(dead) == len(cluster.nodes):
            services.update((svc.name, svc) for svc in brokers.start_apache_kafka(cluster))
            log.info("Apache Kafka %s, %d node(s) on %s, data in %s", apache_kafka.version(), nodes,
                     cluster.bootstrap, cluster.folder)
        elif dead:
            services.update((svc.name, svc) for svc in brokers.restart_apache_nodes(cluster, dead))
            log.info("restarted %s on its own data; waiting until its replicas are back in sync",
                     ", ".join(f"kafka-{i}" for i in dead))
        return cluster.replication, bool(dead) and len(dead) < len(cluster.nodes)
    if "kafka" not in services:
        services["kafka"] = brokers.start_tansu(environment.embedded_kafka_port(), paths().state_dir / "kafka.log")
        log.info("embedded Kafka broker (Tansu) on %s, pid %d", services["kafka"].url, services["kafka"].pid)
    return kafka.replication_factor, False


def _refuse_another_broker(running: dict[str, Service], broker: str, nodes: int) -> None:
    wanted = {"kafka"} if broker == "tansu" else {f"kafka-{i + 1}" for i in range(nodes)}
    other = sorted(name for name in running if name.startswith("kafka") and name not in wanted)
    if other:
        raise ServiceError(f"another local broker is running ({', '.join(other)}): `neuropredict down` first, "
                           f"then `neuropredict up{'' if broker == 'tansu' else ' --broker apache'}"
                           f"{f' --brokers {nodes}' if nodes > 1 else ''}`")


def stop(names: list[str]) -> None:
    """Stop some of what `up` started (e.g. the demo's embedded broker, to empty it)."""
    services = running()
    procs.stop([services[name].pid for name in names if name in services])


def reset_stream(kafka: KafkaParams, topics: Topics, replication: int) -> bool:
    """Delete the topics and the group's offsets if they hold anything, then create the topics
    again (the demo replays history into an empty stream). True if it did."""
    client = kafka_io.admin()
    try:
        if not _group_offsets(client, topics.group):
            return False
        client.delete_groups([topics.group])
        client.delete_topics(list(topics.all), timeout_ms=30_000)
        retry.wait_until(lambda: not set(topics.all) & set(client.list_topics()), 30, "the topics to be deleted")
    finally:
        client.close()
    kafka_io.ensure_topics(kafka, None, topics, replication=replication)
    return True


def down() -> list[str]:
    """Stop exactly the processes `up` recorded, all at once; return their names."""
    alive = running()
    # workers (and the guard) first: they finish their batch, commit and log final metrics while Kafka
    # and MLflow still run
    for tier in ([s for n, s in alive.items() if n.startswith(("worker-", "guard"))],
                 [s for n, s in alive.items() if not n.startswith(("worker-", "guard"))]):
        procs.stop([svc.pid for svc in tier], signals={svc.pid: svc.stop_signal for svc in tier})
    paths().services_file.unlink(missing_ok=True)
    return sorted(alive)


def status(topics: Topics) -> dict[str, Any]:
    """What runs where: services, brokers, topics (partitions, replicas in sync), the serving
    group's committed offsets and lag."""
    out: dict[str, Any] = {"bootstrap": environment.kafka_bootstrap(), "external_kafka": environment.kafka_is_external(),
                           "tracking_uri": environment.tracking_uri(), "group": topics.group, "services": {}}
    for name, svc in load_state().items():
        out["services"][name] = {"pid": svc.pid, "url": svc.url, "alive": svc.alive(), "log": svc.log}
    addresses = [a.rpartition(":") for a in environment.kafka_bootstrap().split(",")]
    out["kafka_reachable"] = any(procs.port_open(host, int(port)) for host, _, port in addresses)
    if out["kafka_reachable"]:
        out.update(_kafka_details(topics))
    return out


def _kafka_details(topics: Topics) -> dict[str, Any]:
    try:
        client = kafka_io.admin()
    except ServiceError as exc:
        return {"kafka_error": str(exc)}
    try:
        cluster = client.describe_cluster()
        names = sorted(t for t in client.list_topics() if not t.startswith("__"))
        described = client.describe_topics(names) if names else []
        offsets = _group_offsets(client, topics.group)
        committed = {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
        ends = kafka_io.high_watermarks(list(committed))
        lag = {tp: ends[tp] - offset for tp, offset in committed.items() if tp in ends}
        return {"brokers": sorted(b["broker_id"] for b in cluster["brokers"] if not b.get("is_fenced")),
                "fenced": sorted(b["broker_id"] for b in cluster["brokers"] if b.get("is_fenced")),
                "controller": cluster.get("controller_id"),
                "topics": {d["name"]: len(d["partitions"]) for d in described},
                "partitions": {d["name"]: _partition_rows(d) for d in described},
                "group_committed": _per_topic(committed), "group_lag": _per_topic(lag)}
    except Exception as exc:  # status is best-effort reporting
        return {"kafka_error": f"{type(exc).__name__}: {exc}"}
    finally:
        client.close()


def _group_offsets(client, group: str) -> dict:
    from kafka.errors import CoordinatorNotAvailableError

    try:
        return client.list_group_offsets(group).get(group, {})
    except CoordinatorNotAvailableError:  # Apache Kafka before any group existed: no offsets topic yet
        return {}


def _partition_rows(described: dict) -> list[dict[str, Any]]:
    return [{"partition": p["partition_index"], "leader": p["leader_id"], "replicas": p["replica_nodes"],
             "isr": p["isr_nodes"]} for p in sorted(described["partitions"], key=lambda p: p["partition_index"])]


def _per_topic(by_partition: dict) -> dict[str, int]:
    totals: dict[str, int] = {}
    for tp, n in by_partition.items():
        totals[tp.topic] = totals.get(tp.topic, 0) + n
    return totals
