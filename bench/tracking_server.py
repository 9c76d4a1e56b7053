"""What a request to the team's tracking server costs, by authentication setting, in one run.

Starts PostgreSQL and the MLflow server as `neuropredict up --tracking server` does
(src/neuropredict/tracking_server.py), in a temporary folder, then the server three times on the
same database: without auth, with basic-auth, and with basic-auth caching its password checks
(what `up` runs). Each time, CLIENTS threads make the registry lookup a serving worker makes every
alias_poll_interval_s, for SECONDS; the figures are requests/s and their ratios.

    python bench/tracking_server.py [--seconds 8] [--clients 3]

Writes bench/results/tracking_server.json and prints a table.
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import shutil
import tempfile
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from neuropredict import tracking, tracking_server
from neuropredict.procs import free_port, http_status
from neuropredict.procs import stop as stop_processes

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
MODEL = "bench-model"
SETTINGS = [("no auth", False, 0), ("basic-auth", True, 0),
            ("basic-auth, cached", True, tracking_server.AUTH_CACHE_TTL_S)]


def _headers(layout: tracking_server.Layout, auth: bool) -> dict[str, str]:
    if not auth:
        return {}
    token = f"{tracking_server.ADMIN_USER}:{layout.secret('admin-password')}".encode()
    return {"Authorization": "Basic " + base64.b64encode(token).decode()}


def _create_model(url: str, headers: dict[str, str]) -> None:
    body = json.dumps({"name": MODEL}).encode()
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/registered-models/create", data=body, method="POST",
                                     headers={**headers, "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as exc:
        if exc.code != 400:  # 400: it exists (an earlier setting created it)
            raise


def _load(url: str, headers: dict[str, str], clients: int, seconds: float) -> dict[str, float]:
    """CLIENTS threads GET the registered model as fast as the server answers; requests/s and latency."""
    target = f"{url}/api/2.0/mlflow/registered-models/get?name={MODEL}"
    latencies: list[float] = []
    errors = [0]
    stop_at = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < stop_at:
            t = time.perf_counter()
            if http_status(target, headers) == 200:
                latencies.append(time.perf_counter() - t)
            else:
                errors[0] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.sort()
    return {"requests_per_s": len(latencies) / seconds, "errors": errors[0],
            "latency_ms_p50": 1000 * latencies[len(latencies) // 2],
            "latency_ms_p99": 1000 * latencies[int(0.99 * (len(latencies) - 1))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "tracking_server.json")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="neuropredict-bench-"))
    layout = tracking_server.Layout.at(folder / "tracking-server")
    layout.folder.mkdir(parents=True)
    pg_port = free_port()
    postgres = tracking_server.start_postgres(layout, pg_port)
    rows: dict[str, dict[str, float]] = {}
    try:
        for name, auth, cache_ttl_s in SETTINGS:
            server = tracking_server.start_server(layout, pg_port, free_port(), auth, cache_ttl_s)
            try:
                headers = _headers(layout, auth)
                _create_model(server.url, headers)
                _load(server.url, headers, args.clients, 1.0)  # warm-up: first requests, caches
                rows[name] = _load(server.url, headers, args.clients, args.seconds)
            finally:
                stop_processes([server.pid])
            print(f"{name:<20} {rows[name]['requests_per_s']:>8.1f} req/s   p50 {rows[name]['latency_ms_p50']:6.1f} ms"
                  f"   p99 {rows[name]['latency_ms_p99']:6.1f} ms   errors {rows[name]['errors']}", flush=True)
    finally:
        stop_processes([postgres.pid], signals={postgres.pid: postgres.stop_signal})
        shutil.rmtree(layout.data_dir, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
    ratios = {"basic_auth_of_no_auth": rows["basic-auth"]["requests_per_s"] / rows["no auth"]["requests_per_s"],
              "cached_of_no_auth": rows["basic-auth, cached"]["requests_per_s"] / rows["no auth"]["requests_per_s"],
              "cached_over_uncached": rows["basic-auth, cached"]["requests_per_s"] / rows["basic-auth"]["requests_per_s"]}
    for key, value in ratios.items():
        print(f"  {key:<24} {value:.2f}")
    report = {"measured": tracking.measured(" ".join(["python", *sys.argv])),
              "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.machine(),
              "clients": args.clients, "seconds": args.seconds, "request": "GET registered-models/get",
              "settings": rows, "ratios": ratios}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {args.out}")


if __name__ == "__main__":
    main()
