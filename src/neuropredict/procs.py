"""The one process layer: spawn a server, tell whether it still runs, wait until it is ready,
stop it; free ports and probes; and the table of what `neuropredict up` started.

A process is known by its PID and its start time (psutil): a PID the system recycled for another
program is never taken for ours, even right after a spawn, when a launcher's command line is
still empty. Everything above this module (brokers, the tracking server, workers, `up`) uses it.
"""

from __future__ import annotations

import os
import re
import signal
import random
import socket
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import psutil

from neuropredict import retry
from neuropredict.errors import ServiceError
from neuropredict.files import read_json, write_json


@dataclass
class Service:
    """A process `up` started: what it is, where it answers, and its log."""

    name: str
    pid: int
    url: str
    log: str
    started_at: float = 0.0  # start_time(): with the PID, names this process alone
    stop_signal: int = int(signal.SIGTERM)

    def alive(self) -> bool:
        return alive(self.pid, self.started_at)


def start_time(pid: int) -> float:
    """When the process started, in seconds after boot: a wall-clock start time (psutil's
    create_time) moves when the clock is adjusted, and a live broker then looked dead to `up`."""
    try:
        after_boot = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]  # field 22
        return int(after_boot) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):  # no /proc (not Linux), or gone
        try:
            return psutil.Process(pid).create_time()
        except psutil.Error:
            return 0.0


def alive(pid: int, started_at: float = 0.0) -> bool:
    """Running (a zombie is not), and the same process when its start time is known."""
    try:
        proc = psutil.Process(pid)
        return (proc.status() != psutil.STATUS_ZOMBIE
                and (not started_at or abs(start_time(pid) - started_at) < 0.01))
    except psutil.Error:
        return False


def spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen:
    """cmd in its own process group (stopping it stops its children), output appended to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, **popen)


def service(name: str, proc: subprocess.Popen, url: str, log_path: Path,
            stop_signal: int = signal.SIGTERM) -> Service:
    return Service(name, proc.pid, url, str(log_path), start_time(proc.pid), int(stop_signal))


def wait_ready(proc: subprocess.Popen, ready: Callable[[], bool], timeout_s: float, what: str,
               log_path: Path, every_s: float = 0.2) -> None:
    """Until ready(); a process that exits first, or a timeout, is a ServiceError saying why (the
    last error of its log) and where to look. A process that timed out is stopped."""

    def check() -> bool:
        if proc.poll() is not None:
            raise ServiceError(f"{what} exited at start (code {proc.returncode}){last_error(log_path)}; "
                               f"see {log_path}")
        return ready()

    try:
        retry.wait_until(check, timeout_s, what, every_s)
    except ServiceError as exc:
        if proc.poll() is None:
            stop([proc.pid])
            raise ServiceError(f"{what} did not get ready within {timeout_s:g} s; see {log_path}") from None
        raise exc from None


def stop(pids: Iterable[int], timeout_s: float = 30.0, signals: dict[int, int] | None = None) -> None:
    """SIGTERM (or signals[pid]) to each process group at once (the nodes of a cluster shut down
    together: one by one, the last would wait for a quorum that is gone), SIGKILL what is left."""
    pids = list(pids)
    for pid in pids:
        _signal_group(pid, (signals or {}).get(pid, signal.SIGTERM))
    gone = lambda: not any(alive(pid) for pid in pids)  # noqa: E731
    try:
        retry.wait_until(gone, timeout_s, "processes to stop", every_s=0.1)
    except ServiceError:
        for pid in pids:
            _signal_group(pid, signal.SIGKILL)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ---- ports and probes ----


def port_open(host: str, port: int, timeout_s: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port() -> int:
    return free_ports(1)[0]


# Ports for servers, drawn below Linux's ephemeral range (32768-60999 by default): a port drawn
# there could be taken by any client's outgoing connection before the server binds it (a demo's
# MLflow UI lost its port that way, minutes after it was drawn).
SERVICE_PORTS = range(20000, 32768)


def free_ports(count: int, avoid: Iterable[int] = ()) -> list[int]:
    """`count` distinct free ports, none in `avoid`, from SERVICE_PORTS. The sockets stay bound
    until all are drawn, so no port is handed out twice."""
    avoid, held = set(avoid), []
    try:
        while len(held) < count:
            port = random.choice(SERVICE_PORTS)
            if port in avoid:
                continue
            avoid.add(port)
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # taken
                s.close()
                continue
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def require_free(port: int, variable: str) -> None:
    """A server about to listen on `port`: taken is one line naming the variable that moves it."""
    if port_open("127.0.0.1", port):
        raise ServiceError(f"port {port} is already in use: stop what runs there, or set {variable} to a free port")


def http_status(url: str, headers: dict[str, str] | None = None, timeout_s: float = 2) -> int | None:
    """The HTTP status of a GET (None: nothing answered within timeout_s)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout_s) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


_EXCEPTION_LINE = re.compile(r"^(?:Caused by: )?[\w.$]*(?:Exception|Error): ")


def last_error(log_path: Path) -> str:
    """Why a server died, from its log (': <reason>'), so that a failed start says it in one line:
    Java's first ERROR with the exception under it, else Python's last exception."""
    try:
        lines = [line.strip() for line in Path(log_path).read_text(errors="replace").splitlines()[-400:]]
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


# ---- the table of what `up` started ----


def load_table(path: Path) -> dict[str, Service]:
    """name -> Service from the table file (empty when there is none)."""
    known = {f.name for f in fields(Service)}
    return {name: Service(**{k: v for k, v in svc.items() if k in known})
            for name, svc in read_json(path, default={}).items()}


def save_table(path: Path, services: dict[str, Service]) -> None:
    write_json(path, {name: asdict(svc) for name, svc in services.items()})
