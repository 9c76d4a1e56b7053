"""serving/compose.yaml's workers as local processes, configured from the compose file itself.

Each worker gets the environment compose gives its container: the `worker` service's
`environment:` (variables interpolated as compose does, the service names `kafka:9092` and
`mlflow:5000` replaced by the local addresses) on top of the image's `ENV` (serving/Dockerfile),
and runs the image's ENTRYPOINT. A change to either file changes the processes too.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import yaml

from neuropredict import procs, tracking_server, workers
from neuropredict.errors import ConfigError
from neuropredict.procs import Service
from neuropredict.settings.paths import paths, project_root
from neuropredict.stream import status

COMPOSE_SERVICE_ADDRESSES = {"kafka": "kafka:9092", "mlflow": "mlflow:5000"}  # as the workers reach them in compose
SECRETS_IN_CONTAINER = "/run/secrets/"
_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def compose_file() -> Path:
    return project_root() / "serving" / "compose.yaml"


def dockerfile() -> Path:
    return project_root() / "serving" / "Dockerfile"


def interpolate(text: str, variables: dict[str, str]) -> str:
    """Compose's variable syntax: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $$."""

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3) or ""
        value = variables.get(name)
        empty = value is None or (op is not None and op.startswith(":") and value == "")
        if op and op.endswith("?") and empty:
            raise ConfigError(f"{compose_file().name}: required variable {name} is not set ({arg or 'no message'})")
        if op and op.endswith("-") and empty:
            return arg
        return value or ""

    return _VARIABLE.sub(substitute, text)


def image_environment(path: Path) -> dict[str, str]:
    """The `ENV key=value ...` lines of a Dockerfile (continuations joined)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip().startswith("ENV "):
            env.update(pair.split("=", 1) for pair in line.split()[1:] if "=" in pair)
    return env


def image_entrypoint(path: Path) -> list[str]:
    found = re.findall(r"^ENTRYPOINT\s+(\[.*\])\s*$", path.read_text(), re.MULTILINE)
    if not found:
        raise ConfigError(f"{path} has no ENTRYPOINT [...] line")
    return yaml.safe_load(found[-1])


def worker_environment(addresses: dict[str, str], variables: dict[str, str], service: str = "worker") -> dict[str, str]:
    """What compose sets in a worker (or the guard's) container, for a process here: `addresses`
    maps each compose service (kafka, mlflow) to its local host:port; `variables` are compose's
    interpolation values."""
    if not compose_file().is_file() or not dockerfile().is_file():
        raise ConfigError(f"{compose_file()} and {dockerfile().name} are needed: the workers take their "
                          f"environment and entry point from them (restore them from git)")
    config = yaml.safe_load(compose_file().read_text())["services"][service]
    env = image_environment(dockerfile())
    env.update({key: interpolate(str(value), variables) for key, value in config.get("environment", {}).items()})
    env["NEUROPREDICT_ROOT"] = str(project_root())  # the image's /app is this project
    for name, inside in COMPOSE_SERVICE_ADDRESSES.items():
        env = {key: value.replace(inside, addresses[name]) for key, value in env.items()}
    # compose mounts its secrets as files in /run/secrets; here they are the tracking server's own files
    return {key: value.replace(SECRETS_IN_CONTAINER, f"{tracking_server.secrets_dir()}/") for key, value in env.items()}


def worker_command(service: str = "worker") -> list[str]:
    """The service's entry point (the worker's: the image's ENTRYPOINT), `python` being this environment's."""
    entry = yaml.safe_load(compose_file().read_text())["services"][service].get("entrypoint") \
        or image_entrypoint(dockerfile())
    return [sys.executable if entry[0].startswith("python") else entry[0], *entry[1:]]


def start_workers(ports: dict[int, int], addresses: dict[str, str], variables: dict[str, str],
                  group: str) -> list[Service]:
    """Workers worker-i as compose would run them, each with its Prometheus endpoint on 127.0.0.1 at
    ports[i] (in compose every container has the same port at its own address); started when each
    has its share of the partitions, or says it is waiting (for a production model: `--wait`)."""
    env = {**_host_basics(), **worker_environment(addresses, variables)}
    state = paths().state_dir
    started = [workers.start(f"worker-{i}", worker_command(), state / f"worker-{i}.log",
                             {**env, "NEUROPREDICT_WORKER_ID": f"worker-{i}", "NEUROPREDICT_METRICS_PORT": str(port),
                              "NEUROPREDICT_METRICS_ADDRESS": "127.0.0.1"}, project_root(), group,
                             f"http://127.0.0.1:{port}/metrics")
               for i, port in sorted(ports.items())]
    workers.wait_ready(started, (status.SERVING, status.WAITING))
    return started


def metrics_port(worker: Service) -> int | None:
    """The port of the endpoint a worker `up` started had (None: it had none)."""
    url = worker.url.removesuffix("/metrics")
    return int(url.rpartition(":")[2]) if worker.url.endswith("/metrics") else None


def start_guard(addresses: dict[str, str], variables: dict[str, str]) -> Service:
    """compose's `guard` service as a process: one rollback guard for the whole stream."""
    env = {**_host_basics(), **worker_environment(addresses, variables, "guard")}
    log_path = paths().state_dir / "guard.log"
    log_path.unlink(missing_ok=True)
    proc = procs.spawn(worker_command("guard"), log_path, env=env, cwd=project_root())
    return procs.service("guard", proc, "rollback guard", log_path)


def _host_basics() -> dict[str, str]:
    """What any process needs from the host (a container has its own): PATH, HOME, locale."""
    return {key: value for key, value in os.environ.items() if key in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
