"""Apache Kafka without Docker: the broker and its CLI tools from Maven Central (or $KAFKA_HOME),
run as KRaft nodes (broker + controller in one JVM) on 127.0.0.1 with their data on disk.

The jars: $KAFKA_HOME/libs when set (a Kafka distribution), else serving/apache-kafka/libs of
this checkout (or $NEUROPREDICT_KAFKA_LIBS), fetched by Maven from the pinned
serving/apache-kafka/pom.xml on first use.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from neuropredict import retry
from neuropredict.errors import ServiceError
from neuropredict.settings import environment

log = logging.getLogger(__name__)

DIST_DIR = Path(__file__).resolve().parents[2] / "serving" / "apache-kafka"
POM = DIST_DIR / "pom.xml"
FETCH_TIMEOUT_S = 900

# What Kafka's bin/*.sh scripts run (java -cp 'libs/*' CLASS ...).
TOOLS = {
    "kafka-storage": "kafka.tools.StorageTool",
    "kafka-topics": "org.apache.kafka.tools.TopicCommand",
    "kafka-console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "kafka-console-producer": "org.apache.kafka.tools.ConsoleProducer",
    "kafka-consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "kafka-transactions": "org.apache.kafka.tools.TransactionsCommand",
    "kafka-delete-records": "org.apache.kafka.tools.DeleteRecordsCommand",
}
# A laptop-sized JVM: the scripts' 1 GiB broker heap and a thread pool per core would crowd the
# worker on 2 cores. Serial GC: a small heap needs no concurrent collector threads.
BROKER_JVM = ["-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:ActiveProcessorCount=1", "-Djava.awt.headless=true"]
TOOL_JVM = ["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]

LOG4J2 = """\
status = error
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""
# The tools' own output is their standard output; their log (errors only) goes to stderr.
QUIET_TOOLS_LOG4J2 = (LOG4J2.replace("rootLogger.level = WARN", "rootLogger.level = ERROR")
                      .replace("logger.started.level = INFO", "logger.started.level = ERROR")
                      .replace("appender.console.name = STDOUT", "appender.console.name = STDOUT\n"
                               "appender.console.target = SYSTEM_ERR"))


def version() -> str:
    """The pinned release (serving/apache-kafka/pom.xml, the one home of the number)."""
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    assert found, f"{POM} names no kafka.version"
    return found.group(1)


def java() -> str:
    path = shutil.which("java")
    if not path:
        raise ServiceError("Apache Kafka needs Java 17+ and `java` is not on PATH: install a JDK (Debian: apt-get "
                           "install openjdk-17-jre-headless), or use the embedded broker (`neuropredict up`)")
    return path


def libs() -> Path:
    """The folder of Kafka's jars: $KAFKA_HOME/libs, else this checkout's, fetched on first use."""
    home = environment.kafka_home()
    if home is not None:
        folder = home / "libs"
        if not any(folder.glob("kafka_2.13-*.jar")):
            raise ServiceError(f"KAFKA_HOME={home} holds no Kafka distribution (no libs/kafka_2.13-*.jar): "
                               f"point it at an unpacked Apache Kafka, or unset it to fetch one with Maven")
        return folder
    folder = environment.kafka_libs_dir() or DIST_DIR / "libs"
    if not (folder / f"kafka_2.13-{version()}.jar").is_file():
        fetch(folder)
        build_class_archive(folder)
    return folder


def fetch(folder: Path) -> Path:
    """Copy the pinned broker and tools with their dependencies into `folder` (Maven Central)."""
    mvn = shutil.which("mvn")
    if not mvn:
        raise ServiceError("fetching Apache Kafka needs Maven and `mvn` is not on PATH: install it (Debian: "
                           "apt-get install maven), or set KAFKA_HOME to an unpacked Kafka distribution")
    print(f"fetching Apache Kafka {version()} (broker and tools, ~55 MB) from Maven Central into {folder} ...",
          flush=True)
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", "-DincludeScope=runtime",
           f"-DoutputDirectory={staging}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ServiceError(f"fetching Apache Kafka took over {FETCH_TIMEOUT_S} s: check access to Maven Central "
                           f"or set KAFKA_HOME to an unpacked Kafka distribution") from None
    if proc.returncode != 0:
        last = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no output"]
        raise ServiceError(f"Maven could not fetch Apache Kafka {version()} ({last[0][:200]}): check access to "
                           f"Maven Central, or set KAFKA_HOME to an unpacked Kafka distribution")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)  # all or nothing: a half-fetched folder is never taken for a distribution
    return folder


def classpath() -> str:
    return str(libs() / "*")


# ---- a class-data archive: Kafka's classes parsed once, mapped by every later JVM ----
# A broker then starts in about 3.3 s instead of 6.2 s, a tool in 0.6 s instead of 1.3 s (measured
# here, Java 17). Java 17 has no -XX:+AutoCreateSharedArchive, so one broker run writes it at exit.


def class_archive(folder: Path) -> Path:
    """The archive of this Java's classes for the jars in `folder` (another Java: another name)."""
    binary = Path(java()).resolve()
    tag = hashlib.sha1(f"{binary}:{binary.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    return folder / f"classes-{tag}.jsa"


def share_classes() -> list[str]:
    """The JVM option that maps the archive, when this checkout's fetched jars have one."""
    if environment.kafka_home() is not None:
        return []
    archive = class_archive(libs())
    # a stale archive (jars touched, Java updated) is skipped silently: the JVM loads the jars
    quiet = ["-Xlog:cds=off", "-Xlog:cds+dynamic=off"]
    return [f"-XX:SharedArchiveFile={archive}", *quiet] if archive.is_file() else []


def build_class_archive(folder: Path, timeout_s: float = 120) -> None:
    """One throwaway node runs and stops; its JVM writes the classes it loaded. Only an archive a
    JVM then maps cleanly is kept (a truncated one crashes the JVM that maps it): an optimisation,
    so a failure only leaves brokers starting as they did."""
    from neuropredict import procs

    archive = class_archive(folder)
    if archive.is_file() or environment.kafka_home() is not None:  # a user's own distribution stays as it is
        return
    with tempfile.TemporaryDirectory(prefix="kafka-classes-") as tmp:
        port, controller_port = procs.free_ports(2)
        cluster = Cluster.layout(Path(tmp) / "kafka", [port], [controller_port])
        cluster.prepare()
        staged = Path(tmp) / archive.name
        node = cluster.nodes[0]
        proc = procs.spawn(cluster.command(node, write_archive=staged), node.log_file)
        try:
            retry.wait_until(lambda: procs.port_open("127.0.0.1", port) or proc.poll() is not None, timeout_s,
                             "a node to start for the class archive", every_s=0.2)
        except ServiceError:
            pass
        procs.stop([proc.pid], timeout_s=timeout_s)  # SIGTERM: a clean exit writes the archive
        code = proc.wait(10)
        check = subprocess.run([java(), *TOOL_JVM, f"-XX:SharedArchiveFile={staged}", "-cp", str(folder / "*"),
                                TOOLS["kafka-storage"], "random-uuid"], capture_output=True, text=True, timeout=60)
        if code in (0, 143) and check.returncode == 0 and "warning" not in check.stdout + check.stderr:
            partial = archive.with_suffix(".partial")
            shutil.copyfile(staged, partial)
            partial.rename(archive)  # all or nothing, as the jars are
        else:
            log.warning("no class archive for Apache Kafka (brokers start a few seconds slower): the node "
                        "exited with %s, a JVM mapping the archive with %s", code, check.returncode)


def tool_command(name: str, *args: str) -> list[str]:
    """`bin/<name>.sh args` of a Kafka distribution, as a command line (see TOOLS)."""
    return [java(), *TOOL_JVM, *share_classes(), f"-Dlog4j2.configurationFile={_quiet_tools_config()}", "-cp",
            classpath(), TOOLS[name], *args]


def run_tool(name: str, *args: str, timeout_s: float = 120) -> str:
    """Run one of Kafka's CLI tools; its standard output, or a ServiceError with its last line."""
    proc = subprocess.run(tool_command(name, *args), capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ServiceError(f"{name} {' '.join(args)} failed ({proc.returncode}): {last[0][:300]}")
    return proc.stdout


def _quiet_tools_config() -> Path:
    path = DIST_DIR / "tools-log4j2.properties"
    if not path.is_file() or path.read_text() != QUIET_TOOLS_LOG4J2:
        path.write_text(QUIET_TOOLS_LOG4J2)
    return path


@dataclass(frozen=True)
class Node:
    """One KRaft node of a local cluster: broker and controller in one JVM."""

    node_id: int
    port: int             # clients (PLAINTEXT)
    controller_port: int  # the Raft quorum
    folder: Path          # its config, log dir and log file

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def properties_file(self) -> Path:
        return self.folder / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.folder / "kafka.log"


@dataclass(frozen=True)
class Cluster:
    """A local Apache Kafka of 1 or 3 nodes whose data lives in `folder` (kept across restarts)."""

    folder: Path
    nodes: tuple[Node, ...]

    @classmethod
    def layout(cls, folder: Path, ports: list[int], controller_ports: list[int]) -> Cluster:
        nodes = tuple(Node(i + 1, port, controller_port, folder / f"node-{i + 1}")
                      for i, (port, controller_port) in enumerate(zip(ports, controller_ports)))
        return cls(folder, nodes)

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def replication(self) -> int:
        """Replicas of each partition: every node of a 3-node cluster, so one may fail."""
        return len(self.nodes)

    @property
    def min_insync(self) -> int:
        """acks=all waits for this many replicas: with 3, a write survives losing any one node."""
        return 2 if len(self.nodes) >= 3 else 1

    def properties(self, node: Node) -> str:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        return "\n".join([
            "process.roles=broker,controller",
            f"node.id={node.node_id}",
            f"controller.quorum.voters={voters}",
            f"listeners=PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{node.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={node.folder / 'data'}",
            "auto.create.topics.enable=false",  # topics are created with explicit partitions (kafka_io)
            f"default.replication.factor={self.replication}",
            f"min.insync.replicas={self.min_insync}",
            f"offsets.topic.replication.factor={self.replication}",
            f"transaction.state.log.replication.factor={self.replication}",
            f"transaction.state.log.min.isr={self.min_insync}",
            # 50 partitions each by default: slow to create on a laptop, and nothing here needs them
            "offsets.topic.num.partitions=8",
            "transaction.state.log.num.partitions=8",
            "num.network.threads=2",  # defaults 3 and 8: threads that crowd a laptop's cores
            "num.io.threads=2",
            "group.initial.rebalance.delay.ms=0",  # one developer's workers: no 3 s wait for more members
            # a dead worker's open transaction is aborted soon after its timeout (default: checked every 10 s)
            "transaction.abort.timed.out.transaction.cleanup.interval.ms=1000",
            "",
        ])

    def prepare(self) -> None:
        """Write each node's config; format its storage on first use (the data then persists)."""
        cluster_id_file = self.folder / "cluster.id"
        self.folder.mkdir(parents=True, exist_ok=True)
        if not cluster_id_file.is_file():
            cluster_id_file.write_text(_random_cluster_id())
        cluster_id = cluster_id_file.read_text().strip()
        (self.folder / "log4j2.properties").write_text(LOG4J2)
        for node in self.nodes:
            node.folder.mkdir(parents=True, exist_ok=True)
            node.properties_file.write_text(self.properties(node))
            if not (node.folder / "data" / "meta.properties").is_file():
                run_tool("kafka-storage", "format", "--cluster-id", cluster_id, "--config", str(node.properties_file),
                         "--ignore-formatted")

    def command(self, node: Node, write_archive: Path | None = None) -> list[str]:
        classes = [f"-XX:ArchiveClassesAtExit={write_archive}"] if write_archive else share_classes()
        return [java(), *BROKER_JVM, *classes, f"-Dlog4j2.configurationFile={self.folder / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={node.folder}", "-cp", classpath(), "kafka.Kafka", str(node.properties_file)]


def _random_cluster_id() -> str:
    """What `kafka-storage random-uuid` prints (a base64url UUID, 22 characters), without a JVM start."""
    import base64

    while True:  # Kafka's own Uuid.randomUuid() redraws one that starts with "-": a tool would read it as an option
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def main() -> int:
    """`python -m neuropredict.apache_kafka` (make kafka): fetch it and its class archive unless
    present; say where it is."""
    from neuropredict.errors import NeuropredictError

    try:
        folder = libs()
        build_class_archive(folder)
        print(f"Apache Kafka {version()}: {folder}")
        return 0
    except NeuropredictError as exc:
        print(f"error: {exc}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
