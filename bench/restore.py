"""Restore time against history length: how long a worker takes to rebuild every symbol of its
partitions on assignment, from the state topic (stream/changelog.py, the default) and from the
input read back (the way before it, still the fallback), side by side on one Apache Kafka node.

For each history length: real daily closes of the configured symbols (copied under other names to
reach it) go into fresh topics; one exactly-once worker scores them all and commits; then fresh
workers restore alternately from the state topic and from the input, `--rounds` times each.
Each restore's symbols must all have a full window (0 warm-up). Report: bench/results/restore.json.

    python bench/restore.py            # the project's production model: run `dvc repro` first
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from serving import make_ticks, production_version  # bench/serving.py: replayed real closes under other names

from neuropredict import brokers, kafka_io, producer, tracking
from neuropredict.console import configure_logging
from neuropredict.settings.contracts import Topics
from neuropredict.settings.schema import load_params
from neuropredict.stream.worker import Worker

HERE = Path(__file__).resolve().parent
MODES = ("state", "input")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="10000,50000,200000", help="history lengths (ticks in the input)")
    ap.add_argument("--copies", type=int, default=12, help="each symbol's closes under this many names")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "restore.json")
    return ap.parse_args()


def score_all(params, bootstrap: str, topics: Topics, version: str, n: int) -> None:
    worker = Worker(params, bootstrap, topics, report_to_mlflow=False, pinned_version=version)
    worker.start()
    thread = threading.Thread(target=worker.run, kwargs={"max_messages": n, "timeout_s": 600}, daemon=True)
    thread.start()
    thread.join(660)


def time_restore(params, bootstrap: str, topics: Topics, version: str, mode: str) -> tuple[float, int, int]:
    """Seconds to rebuild every assigned partition, symbols restored, and those with a full window."""
    worker = Worker(params, bootstrap, topics, report_to_mlflow=False, pinned_version=version)
    worker.start()
    if mode == "input":
        worker.model.changelog = None
    try:
        deadline = time.monotonic() + 60
        while not worker._to_restore and time.monotonic() < deadline:
            worker.consumer.poll(timeout_ms=100, max_records=1)  # joins the group; nothing is committed
        started = time.perf_counter()
        worker._restore(set(worker._to_restore))
        seconds = time.perf_counter() - started
        book = worker.model.book
        return seconds, len(book.states), sum(book.full_window(s) is not None for s in book.states)
    finally:
        worker.close()


def main() -> int:
    args = parse_args()
    configure_logging()
    params = load_params()
    version = production_version(params)
    if version is None:
        return 1
    lengths = [int(x) for x in args.lengths.split(",")]
    samples: dict[str, dict[int, list[float]]] = {m: {n: [] for n in lengths} for m in MODES}
    restored: dict[int, dict[str, list[int]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-restore-") as tmp:
        broker = brokers.start_scratch_broker("apache", Path(tmp), params.kafka)
        try:
            for n in lengths:
                topics = Topics(f"n{n}.")
                kafka_io.ensure_topics(params.kafka, broker.bootstrap, topics)
                ticks = make_ticks(params, args.copies, n)
                producer.publish(ticks, topics.prices, bootstrap=broker.bootstrap, serving=params.serving)
                print(f"{n} ticks of {len({t[1] for t in ticks})} symbols: scoring them once ...", flush=True)
                score_all(params, broker.bootstrap, topics, version, len(ticks))
                for _ in range(args.rounds):
                    for mode in MODES:
                        seconds, symbols, full = time_restore(params, broker.bootstrap, topics, version, mode)
                        samples[mode][n].append(seconds)
                        restored.setdefault(n, {}).setdefault(mode, []).append(full)
                        print(f"   restore from the {mode}: {seconds:.3f} s, {full} of {symbols} symbols with a full "
                              f"window", flush=True)
        finally:
            broker.stop()
    median = {m: {str(n): statistics.median(v) for n, v in samples[m].items()} for m in MODES}
    report = {"lengths": lengths, "rounds": args.rounds, "copies": args.copies, "restore_s": median,
              "samples": {m: {str(n): v for n, v in samples[m].items()} for m in MODES},
              "full_windows": {str(n): v for n, v in restored.items()},
              "state_over_input": {str(n): median["state"][str(n)] / median["input"][str(n)] for n in lengths},
              "measured": tracking.measured("python bench/restore.py", HERE.parent)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for n in lengths:
        print(f"{n:>8} ticks: state {median['state'][str(n)]:.3f} s, input {median['input'][str(n)]:.3f} s")
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
