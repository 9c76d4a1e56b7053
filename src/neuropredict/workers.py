"""Serving workers as processes, for the demo and for compose's topology: start them, know they
are ready from the status each one writes (its phase and partitions, not a line of its log),
stop them the way SIGTERM should (each finishes its batch, commits, logs its final metrics)."""

from __future__ import annotations

from pathlib import Path

from neuropredict import procs, retry
from neuropredict.errors import ServiceError
from neuropredict.procs import Service
from neuropredict.stream import status

START_TIMEOUT_S = 180.0  # a cold start loads TensorFlow and the model: ~10 s here, alone
STOP_TIMEOUT_S = 60.0


def status_file(log_path: Path) -> Path:
    return Path(log_path).with_suffix(".status.json")


def start(name: str, cmd: list[str], log_path: Path, env: dict[str, str], cwd: Path, group: str,
          url: str = "") -> Service:
    """One worker process of consumer group `group`; its status file lies beside its log. `url`:
    where it answers (its metrics endpoint), if anywhere."""
    log_path.unlink(missing_ok=True)
    status_file(log_path).unlink(missing_ok=True)
    proc = procs.spawn(cmd, log_path, env={**env, "NEUROPREDICT_WORKER_STATUS": str(status_file(log_path))}, cwd=cwd)
    return procs.service(name, proc, url or f"group {group}", log_path)


def wait_ready(workers: list[Service], phases: tuple[str, ...] = (status.SERVING,),
               timeout_s: float = START_TIMEOUT_S) -> None:
    """Until each worker is in one of `phases` (serving: it owns partitions); one that exits first
    is an error quoting the end of its log."""

    def ready() -> bool:
        for svc in workers:
            if not svc.alive():
                raise ServiceError(f"{svc.name} exited at start (see {svc.log}):\n{_tail(svc.log)}")
        return all(status.read(status_file(Path(svc.log))).get("phase") in phases for svc in workers)

    try:
        retry.wait_until(ready, timeout_s, f"{len(workers)} worker(s) to start", every_s=0.2)
    except BaseException:
        stop(workers)
        raise


def stop(workers: list[Service], timeout_s: float = STOP_TIMEOUT_S) -> None:
    procs.stop([svc.pid for svc in workers], timeout_s)


def _tail(log: str, lines: int = 15) -> str:
    try:
        return "".join(Path(log).read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return ""
