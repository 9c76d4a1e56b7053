"""Serving benchmark: the worker beside the seed's per-message loop, through the real embedded broker.

One run, side by side (this machine is shared and noisy: read the ratios):
  A. end-to-end throughput of the worker on a backlog of replayed real ticks (consumed, scored,
     published, acknowledged, committed), with where the time goes (timers in the loop, and a
     cProfile of the worker thread with --profile);
  B. the same stream through a loop written the way the seed's consumer.py did it (one
     `model.predict` per message), for `--seed-ticks` scored messages;
  C. tick-to-prediction latency (Kafka CreateTime of the input -> of the output) at a fixed offered
     rate, p50/p95/p99.

    python bench/serving.py                 # full run -> bench/results/serving.json
    python bench/serving.py --smoke --out X # seconds-long smoke run (the test suite)

Uses the project's production model (run `dvc repro` first) and a private broker on a free port.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from neuropredict import config, kafka_io, producer, registry, services  # noqa: E402  (sets quiet library defaults)
from neuropredict.console import configure_logging  # noqa: E402
from neuropredict.forecaster import limit_threads  # noqa: E402
from neuropredict.stream.worker import Worker  # noqa: E402

HERE = Path(__file__).resolve().parent
SEED_TOPIC = "bench_seed_predictions"
OVERLAPPED = ("model",)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ticks", type=int, default=60_000, help="backlog size for the throughput phase")
    ap.add_argument("--copies", type=int, default=4, help="copies of each real symbol (AAPL, AAPL.2, ...)")
    ap.add_argument("--seed-ticks", type=int, default=300, help="scored messages for the per-message loop")
    ap.add_argument("--rate", type=float, default=1000.0, help="offered ticks/s for the latency phase")
    ap.add_argument("--rate-seconds", type=float, default=20.0, help="length of the latency phase")
    ap.add_argument("--profile", action="store_true", help="cProfile the worker thread in phase A")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs, measures nothing")
    ap.add_argument("--out", type=Path, help="report path (default bench/results/serving[-smoke].json)")
    args = ap.parse_args()
    if args.smoke:
        args.ticks, args.copies, args.seed_ticks, args.rate_seconds = 1500, 2, 20, 2.0
    args.out = args.out or HERE / "results" / ("serving-smoke.json" if args.smoke else "serving.json")
    return args


def make_ticks(params, copies: int, limit: int, suffix: str = "") -> list[tuple[str, str, float]]:
    """Replayed real daily closes of every configured symbol, `copies` times under other names."""
    project = config.paths()
    frames, _ = producer.replay_frames(params.data.symbols, params.data.interval, project.raw_dir, project.snapshot_dir)
    real = producer.replay_ticks(frames, params.data.interval, params.data.start, params.data.end, 0,
                                 params.featurize.price_column)
    ticks = []
    for t in real:
        for c in range(copies):
            ticks.append((t.timestamp, (t.symbol if c == 0 else f"{t.symbol}.{c + 1}") + suffix, t.price))
            if len(ticks) == limit:
                return ticks
    return ticks


def percentiles(values_ms) -> dict[str, float]:
    v = np.asarray(values_ms, dtype=np.float64)
    if len(v) == 0:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "n": 0}
    return {f"p{q}": float(np.percentile(v, q)) for q in (50, 95, 99)} | {"n": int(len(v))}


def phase_throughput(params, bootstrap: str, ticks, version: str, profile: bool) -> tuple[Worker, dict]:
    sent = producer.publish(ticks, bootstrap=bootstrap, serving=params.serving)
    worker = Worker(params, bootstrap=bootstrap, group="bench-serving", report_to_mlflow=False,
                    pinned_version=version)
    worker.start()
    prof = cProfile.Profile() if profile else None

    def run() -> None:
        if prof:
            prof.enable()
        worker.run()
        if prof:
            prof.disable()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while worker.stats.consumed < len(ticks):
        time.sleep(0.05)
    s = worker.stats
    wall = s.last_commit_at - s.first_data_at
    # the loop's own steps (idle: polls before the backlog arrived); the model call runs on the
    # model thread, overlapped with publishing, and shows up in the loop as model_wait
    steps = {k: v for k, v in s.seconds.items() if k not in ("idle", *OVERLAPPED)}
    busy = sum(steps.values())
    result = {
        "ticks": len(ticks), "producer_ticks_per_s": sent["ticks_per_s"],
        "throughput_ticks_per_s": s.consumed / wall, "wall_s": wall, "batches": s.batches,
        "breakdown_seconds": dict(sorted(steps.items(), key=lambda kv: -kv[1])),
        "breakdown_pct": {k: 100 * v / busy for k, v in sorted(steps.items(), key=lambda kv: -kv[1])},
        "model_thread_seconds": {k: s.seconds.get(k, 0.0) for k in OVERLAPPED},
    }
    result["_thread"], result["_profile"] = thread, prof
    return worker, result


def phase_seed_loop(params, bootstrap: str, forecaster, n_scored: int) -> dict:
    """The seed's consumer.py, faithfully slow: json per message, model.predict per message."""
    import json as std_json
    from collections import defaultdict, deque

    consumer = kafka_io.consumer("bench-seed", bootstrap, max_poll_records=500)
    consumer.subscribe([config.PRICES_TOPIC])
    out = kafka_io.producer(bootstrap, params.serving)
    windows: dict[str, deque] = defaultdict(lambda: deque(maxlen=forecaster.window))
    scaler, model = forecaster.scaler, forecaster.model
    scored, consumed, started = 0, 0, None
    while scored < n_scored:
        for records in consumer.poll(timeout_ms=1000).values():
            for rec in records:
                msg = std_json.loads(rec.value)
                consumed += 1
                w = windows[msg["symbol"]]
                w.append(msg["price"])
                if len(w) < forecaster.window:
                    continue
                started = started or time.perf_counter()
                window = np.array([w], dtype=np.float64)
                mu, sd = scaler.stats([msg["symbol"]])
                y = model.predict(scaler.to_model_input(window, mu, sd), verbose=0)
                predicted = float(scaler.to_price(y, window[:, -1], mu, sd)[0])
                out.send(SEED_TOPIC, std_json.dumps({**msg, "predicted_price": predicted}).encode())
                scored += 1
                if scored >= n_scored:
                    break
            if scored >= n_scored:
                break
    out.flush()
    elapsed = time.perf_counter() - started
    consumer.close()
    out.close()
    return {"scored": scored, "seconds": elapsed, "seed_loop_ticks_per_s": scored / elapsed}


def phase_latency(params, bootstrap: str, worker: Worker, ticks, rate: float, seconds: float) -> dict:
    n = min(len(ticks), int(rate * seconds))
    since_ms = int(time.time() * 1000)
    before = worker.stats.consumed
    sent = producer.publish(ticks[:n], bootstrap=bootstrap, rate=rate, serving=params.serving)
    deadline = time.monotonic() + 60
    while worker.stats.consumed < before + n and time.monotonic() < deadline:
        time.sleep(0.05)
    with kafka_io.TopicReader(bootstrap) as reader:
        created = {(r.partition, r.offset): r.timestamp
                   for r in reader.read_all([config.PRICES_TOPIC]) if r.timestamp >= since_ms}
        outputs = [r for r in reader.read_all([config.PREDICTIONS_TOPIC]) if r.timestamp >= since_ms]
    lat = []
    for r in outputs:
        v = json.loads(r.value)
        t_in = created.get((v["input_partition"], v["input_offset"]))
        if t_in is not None:
            lat.append(r.timestamp - t_in)
    return {"offered_ticks_per_s": rate, "achieved_offer_ticks_per_s": sent["ticks_per_s"],
            "seconds": sent["seconds"], **percentiles(lat)}


def main() -> int:
    args = parse_args()
    configure_logging()
    params = config.load_params()
    name = params.register.model_name
    version = registry.alias_version(name)
    if version is None:
        print(f"no {name}@production: run `dvc repro` first", file=sys.stderr)
        return 1
    limit_threads(params.serving.model_threads)  # as a serving process does, before TF starts
    loaded = registry.load(name, version=version)
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        port = services.free_port()
        broker = services.start_broker(port, Path(tmp) / "kafka.log")
        bootstrap = f"127.0.0.1:{port}"
        try:
            kafka_io.ensure_topics(params.kafka, bootstrap, topics=(*config.TOPICS, SEED_TOPIC))
            ticks = make_ticks(params, args.copies, args.ticks)
            symbols = len({t[1] for t in ticks})
            print(f"A. worker on a backlog of {len(ticks)} ticks of {symbols} symbols ...", flush=True)
            worker, a = phase_throughput(params, bootstrap, ticks, version, args.profile)
            print(f"   {a['throughput_ticks_per_s']:,.0f} ticks/s end to end", flush=True)
            print(f"B. the seed's per-message loop on {args.seed_ticks} scored ticks ...", flush=True)
            b = phase_seed_loop(params, bootstrap, loaded.forecaster, args.seed_ticks)
            print(f"   {b['seed_loop_ticks_per_s']:,.1f} ticks/s", flush=True)
            print(f"C. latency at {args.rate:g} ticks/s offered for {args.rate_seconds:g} s ...", flush=True)
            # symbols of their own (the worker keeps the backlog's), in time order as a live feed
            c = phase_latency(params, bootstrap, worker, make_ticks(params, 1, 10**9, suffix=".live"), args.rate,
                              args.rate_seconds)
            worker.stop_event.set()
            a.pop("_thread").join(30)
            prof = a.pop("_profile")
        finally:
            services.stop_process(broker.pid)
    saturation = percentiles(list(worker.stats.latencies_ms)[: len(ticks)])
    report = {
        "throughput_ticks_per_s": a["throughput_ticks_per_s"],
        "seed_loop_ticks_per_s": b["seed_loop_ticks_per_s"],
        "speedup": a["throughput_ticks_per_s"] / b["seed_loop_ticks_per_s"],
        "latency_ms": {k: c[k] for k in ("p50", "p95", "p99", "n")} | {"offered_ticks_per_s": c["offered_ticks_per_s"],
                                                                      "achieved_offer_ticks_per_s": c["achieved_offer_ticks_per_s"]},
        "saturation_latency_to_commit_ms": saturation,
        "throughput_phase": a, "seed_loop_phase": b, "latency_phase": c,
        "model": {"name": name, "version": version, "window": loaded.forecaster.window,
                  "cell": registry.version_tags(name, version).get("cell")},
        "settings": {k: getattr(params.serving, k) for k in ("max_poll_records", "producer_linger_ms",
                                                              "producer_batch_bytes", "compression")},
        "symbols": symbols, "smoke": args.smoke,
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if prof:
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(20)
        report["profile_top_tottime"] = text.getvalue().splitlines()[:45]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"report: {args.out}")
    return 0


def table(r: dict) -> str:
    a = r["throughput_phase"]
    lines = ["", f"serving benchmark ({r['symbols']} symbols, model v{r['model']['version']} "
                 f"{r['model']['cell']} W={r['model']['window']}, {r['machine']['cpu_count']} CPUs shared with the broker)",
             f"{'worker, end to end (backlog)':<40}{r['throughput_ticks_per_s']:>12,.0f} ticks/s",
             f"{'seed loop (model.predict per message)':<40}{r['seed_loop_ticks_per_s']:>12,.1f} ticks/s",
             f"{'speed-up':<40}{r['speedup']:>12,.0f} x",
             f"{'latency at %g ticks/s offered' % r['latency_ms']['offered_ticks_per_s']:<40}"
             f"p50 {r['latency_ms']['p50']:.1f} ms  p95 {r['latency_ms']['p95']:.1f} ms  p99 {r['latency_ms']['p99']:.1f} ms",
             "where the worker's time goes (backlog phase):"]
    for step, pct in a["breakdown_pct"].items():
        lines.append(f"  {step:<11}{a['breakdown_seconds'][step]:>7.2f} s {pct:>6.1f} %")
    lines.append("  on the model thread, overlapped with publishing: "
                 + ", ".join(f"{k} {v:.2f} s" for k, v in a["model_thread_seconds"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
