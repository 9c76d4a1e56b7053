"""Prometheus for the workers `up` runs (`neuropredict up --monitoring`): Debian's `prometheus`,
configured from serving/prometheus/ (compose's own files) with one change: the workers are found
in a file kept from the services state (file-based discovery), not by compose's DNS. Workers that
`up` starts, restarts or forgets come and go from that file; Prometheus rereads it by itself.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from neuropredict import procs
from neuropredict.errors import ConfigError, ServiceError
from neuropredict.procs import Service
from neuropredict.settings.paths import paths, project_root

WORKERS_JOB = "neuropredict-workers"
START_TIMEOUT_S = 60.0


def config_dir() -> Path:
    """serving/prometheus: prometheus.yml, alerts.yml and their tests (compose mounts the same files)."""
    return project_root() / "serving" / "prometheus"


def state_dir() -> Path:
    return paths().state_dir / "prometheus"


def targets_file() -> Path:
    return state_dir() / "targets" / "workers.json"


def prometheus_bin() -> str:
    """$NEUROPREDICT_PROMETHEUS_BIN, else `prometheus` on the PATH (Debian's package)."""
    found = os.environ.get("NEUROPREDICT_PROMETHEUS_BIN") or shutil.which("prometheus")
    if not found:
        raise ServiceError("Prometheus is not installed: `apt-get install prometheus` (Debian, Ubuntu), or set "
                           "NEUROPREDICT_PROMETHEUS_BIN to its binary")
    return found


def process_config() -> dict:
    """compose's prometheus.yml, the workers' job discovered from targets_file(), the rules by absolute path."""
    source = config_dir() / "prometheus.yml"
    if not source.is_file():
        raise ConfigError(f"{source} is missing: Prometheus takes its configuration and alert rules from "
                          f"serving/prometheus/ (restore it from git)")
    config = yaml.safe_load(source.read_text())
    config["rule_files"] = [str(config_dir() / name) for name in config.get("rule_files", [])]
    for job in config["scrape_configs"]:
        if job["job_name"] == WORKERS_JOB:
            job.pop("dns_sd_configs", None)
            job["file_sd_configs"] = [{"files": [str(targets_file())], "refresh_interval": "5s"}]
    return config


def write_targets(services: dict[str, Service]) -> None:
    """The workers' endpoints as Prometheus' file discovery reads them, replaced whole (a reader never
    sees half a file). A worker that died stays until `up` replaces it or `down` forgets it: it is down."""
    targets = [{"targets": [svc.url.removeprefix("http://").removesuffix("/metrics")], "labels": {"worker": name}}
               for name, svc in sorted(services.items()) if name.startswith("worker-") and svc.url.endswith("/metrics")]
    path = targets_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(json.dumps(targets, indent=1))
    staging.replace(path)


def start(port: int, services: dict[str, Service]) -> Service:
    """Prometheus on 127.0.0.1:port scraping the workers in `services`; ready when it says so."""
    procs.require_free(port, "NEUROPREDICT_PROMETHEUS_PORT")
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    write_targets(services)
    config_path = folder / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(process_config(), sort_keys=False))
    cmd = [prometheus_bin(), f"--config.file={config_path}", f"--storage.tsdb.path={folder / 'data'}",
           f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=15d"]
    log_path = folder / "prometheus.log"
    proc = procs.spawn(cmd, log_path)
    url = f"http://127.0.0.1:{port}"
    procs.wait_ready(proc, lambda: procs.http_status(f"{url}/-/ready") == 200, START_TIMEOUT_S, "Prometheus", log_path,
                     every_s=0.2)
    return procs.service("prometheus", proc, url, log_path)
