"""A worker's health check (compose's `healthcheck`): `python -m neuropredict.stream.health`.

Healthy when the worker's Prometheus endpoint answers and says the worker is waiting (for its
model or broker: it retries by itself) or serving with a loop that polled Kafka within
MAX_POLL_AGE_S. A process that answers but whose loop hangs is unhealthy. Exit 0 or 1 with one
line saying why; it imports nothing heavy (it runs every few seconds beside the worker).
"""

from __future__ import annotations

import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from neuropredict.settings import environment

MAX_POLL_AGE_S = 60.0  # the loop polls every serving.poll_timeout_ms (0.1 s), idle or not


def check(port: int, host: str = "127.0.0.1", max_poll_age_s: float = MAX_POLL_AGE_S) -> tuple[bool, str]:
    try:
        text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()
    except OSError as exc:
        return False, f"no answer from http://{host}:{port}/metrics ({exc})"
    samples = {(s.name, s.labels.get("phase")): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    phase = next((p for (name, p), v in samples.items() if name == "neuropredict_worker_phase" and v == 1), None)
    if phase == "serving":
        age = time.time() - samples.get(("neuropredict_last_poll_timestamp_seconds", None), 0.0)
        if age > max_poll_age_s:
            return False, f"serving, but the loop has not polled Kafka for {age:.0f} s"
        return True, f"serving, last poll {age:.1f} s ago"
    if phase in ("starting", "waiting"):
        return True, phase
    return False, f"phase {phase or 'unknown'}"


def main() -> int:
    port = environment.metrics_port(0)
    if not port:
        print("unhealthy: NEUROPREDICT_METRICS_PORT is not set (the health check reads the metrics endpoint)")
        return 1
    healthy, why = check(port)
    print(f"{'healthy' if healthy else 'unhealthy'}: {why}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
