"""A node of a 3-node Apache Kafka cluster SIGKILLed under load, and started again: the longest
pause between two forecasts while it dies, and while it comes back, with nothing lost or seen twice.

Two exactly-once workers (threads) score a replay of real daily closes (copied under other names
to last the run) sent at --rate ticks/s to topics with 3 replicas (min.insync.replicas 2). At
--kill-at seconds the leader of the input's partition 0 is SIGKILLed; at --restart-at seconds it
is started again on its own data (as `neuropredict up` restarts a dead node). A pause is the
longest gap between consecutive forecasts' producer timestamps of any one input partition (its
symbols wait together) that overlaps the time the node is down, or the --window seconds after it
is back, beside the longest gap before the kill; also across all partitions together.
Each of --runs runs on a fresh cluster; the report gives the medians and every run.
Report: bench/results/failover.json.

    python bench/failover.py            # the project's production model: run `dvc repro` first
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from serving import make_ticks, production_version  # bench/serving.py: replayed real closes under other names

from neuropredict import apache_kafka, brokers, kafka_io, messages, procs, producer, registry, tracking
from neuropredict.console import configure_logging
from neuropredict.settings.contracts import Topics
from neuropredict.settings.schema import load_params
from neuropredict.stream import delivery
from neuropredict.stream.worker import Worker

HERE = Path(__file__).resolve().parent


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=600.0, help="ticks/s offered")
    ap.add_argument("--seconds", type=float, default=90.0, help="how long ticks are sent")
    ap.add_argument("--kill-at", type=float, default=20.0)
    ap.add_argument("--restart-at", type=float, default=55.0)
    ap.add_argument("--window", type=float, default=30.0, help="seconds after each event searched for the pause")
    ap.add_argument("--runs", type=int, default=3, help="each on a fresh cluster; the report gives medians and each run")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "failover.json")
    return ap.parse_args()


def longest_gap(times_s: np.ndarray, lo: float, hi: float) -> float:
    """The longest gap between consecutive forecasts that overlaps [lo, hi)."""
    gaps = np.diff(times_s)
    starts, ends = times_s[:-1], times_s[1:]
    inside = (ends > lo) & (starts < hi)
    return float(gaps[inside].max()) if inside.any() else float("nan")


def main() -> int:
    args = parse_args()
    configure_logging()
    params = load_params()
    version = production_version(params)
    if version is None:
        return 1
    ticks = make_ticks(params, 6, int(args.rate * args.seconds))
    runs = []
    for i in range(args.runs):  # each on a fresh cluster: which node dies (coordinator or not) varies
        with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
            ports = procs.free_ports(6)
            cluster = apache_kafka.Cluster.layout(Path(tmp) / "apache-kafka", ports[:3], ports[3:])
            services = brokers.start_apache_kafka(cluster)
            try:
                brokers.ScratchBroker("apache", cluster.bootstrap, services, 3).create(params.kafka, Topics())
                runs.append(run(args, params, version, ticks, Topics(), cluster, services))
            finally:
                procs.stop([svc.pid for svc in services])
        print(f"run {i + 1}: {runs[-1]['pause_after_kill_s']:.1f} s after the kill", flush=True)
    medians = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k.endswith("_s")}
    totals = {k: sum(r[k] for r in runs) for k in ("lost", "duplicates", "rewinds")}
    report = {**medians, **totals, "worst_pause_after_kill_s": max(r["pause_after_kill_s"] for r in runs),
              "rate": args.rate, "ticks": len(ticks),
              "runs": runs, "settings": runs[0]["settings"],
              "measured": tracking.measured(f"python bench/failover.py --runs {args.runs}", HERE.parent)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"median of {args.runs} runs: longest pause {report['pause_after_kill_s']:.1f} s after the kill, {report['pause_after_restart_s']:.1f} s "
          f"after the restart ({report['longest_gap_before_kill_s']:.2f} s before); lost {report['lost']}, "
          f"seen twice {report['duplicates']}\nreport: {args.out}")
    return 0


def run(args, params, version: str, ticks, topics: Topics, cluster, services) -> dict:
    bootstrap = cluster.bootstrap
    workers = [Worker(params, bootstrap, topics, report_to_mlflow=False, pinned_version=version) for _ in range(2)]
    threads = []
    for w in workers:
        w.start()
        threads.append(threading.Thread(target=w.run, daemon=True))
        threads[-1].start()
    stop = threading.Event()
    sender = threading.Thread(target=producer.publish, args=(ticks, topics.prices),
                              kwargs={"bootstrap": bootstrap, "rate": args.rate, "serving": params.serving, "stop": stop},
                              daemon=True)
    started = time.time()
    sender.start()
    events = {}
    time.sleep(max(0.0, started + args.kill_at - time.time()))
    kafka_io.wait_fully_replicated(bootstrap)  # as an operator would check before: nothing under-replicated
    victim = kafka_io.partition_leader(bootstrap, topics.prices, 0)
    node = next(svc for svc in services if svc.name == f"kafka-{victim}")
    os.killpg(node.pid, signal.SIGKILL)
    events["kill"] = time.time()
    print(f"killed kafka-{victim} at {events['kill'] - started:.1f} s", flush=True)
    time.sleep(max(0.0, started + args.restart_at - time.time()))
    events["restart"] = time.time()
    services[:] = [s for s in services if s.name != node.name] + brokers.restart_apache_nodes(cluster, [victim])
    kafka_io.wait_fully_replicated(bootstrap, timeout_s=180)
    events["in_sync"] = time.time()
    print(f"kafka-{victim} restarted at {events['restart'] - started:.1f} s, in sync after "
          f"{events['in_sync'] - events['restart']:.1f} s", flush=True)
    sender.join()
    deadline = time.time() + 120
    while sum(w.stats.consumed for w in workers) < len(ticks) and time.time() < deadline:
        time.sleep(0.5)
    for w in workers:
        w.stop_event.set()
    for t in threads:
        t.join(60)
    with kafka_io.TopicReader(bootstrap) as reader:
        outs = reader.read_all([topics.predictions])
        inputs = reader.read_all([topics.prices])
    times = np.sort(np.array([r.timestamp / 1000 for r in outs]))
    where = [(int(p["input_partition"]), int(p["input_offset"])) for p in map(lambda r: messages.decode(r.value), outs)]
    by_partition = {}  # the symbols of one input partition wait together: their longest gap is what they saw
    for (partition, _), r in zip(where, outs):
        by_partition.setdefault(partition, []).append(r.timestamp / 1000)
    partition_times = {p: np.sort(np.array(v)) for p, v in by_partition.items()}

    def worst(lo: float, hi: float) -> float:
        return max(longest_gap(t, lo, hi) for t in partition_times.values())

    def worst_before(lo: float, hi: float) -> float:  # gaps over before the kill: none spanning it
        return max(longest_gap(t[t <= hi], lo, hi) for t in partition_times.values())

    return {
        "rate": args.rate, "ticks": len(ticks), "inputs": len(inputs), "forecasts": len(outs),
        "killed_node": victim, "kill_at_s": events["kill"] - started, "restart_at_s": events["restart"] - started,
        "back_in_sync_s": events["in_sync"] - events["restart"],
        # any partition's longest gap between two forecasts (all partitions together: *_all_partitions)
        # gaps that overlap each period: before the kill, the node down, the node back
        "longest_gap_before_kill_s": worst_before(started + 5, events["kill"]),
        "pause_after_kill_s": worst(events["kill"], events["restart"]),
        "pause_after_restart_s": worst(events["restart"], events["restart"] + args.window),
        "pause_after_kill_all_partitions_s": longest_gap(times, events["kill"], events["restart"]),
        "pause_after_restart_all_partitions_s": longest_gap(times, events["restart"], events["restart"] + args.window),
        "duplicates": len(where) - len(set(where)),
        # the ticks as sent: every one forecast once its symbol has a window (a re-sent duplicate is a dead letter)
        "lost": producer.expected_forecasts(
            [messages.Tick(*t) for t in ticks], registry.model_window(params.register.model_name, version), False)
        - len(set(where)),
        "consumed": sum(w.stats.consumed for w in workers), "rewinds": sum(w.stats.rewinds for w in workers),
        "settings": {"commit_timeout_s": delivery.TRANSACTION_CALL_TIMEOUT_S, "abort_timeout_s": delivery.ABORT_CALL_TIMEOUT_S,
                     "transactional_request_timeout_ms": kafka_io.TRANSACTIONAL_REQUEST_TIMEOUT_MS},
    }


if __name__ == "__main__":
    sys.exit(main())
