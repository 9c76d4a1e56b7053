"""Serving benchmark: the worker on the embedded broker and on Apache Kafka, at-least-once and
exactly-once, beside the model call's own ceiling and the seed's per-message loop.

One run, side by side (this machine is shared and noisy: read the ratios):
  M. the model ceiling: windows/s of the production model alone (the worker's own prepare and
     chunked model call on the same backlog, no Kafka), the bound for any broker;
  A. end-to-end throughput of the worker on a backlog of replayed real ticks (consumed, scored,
     published, acknowledged, committed), with where the time goes (timers in the loop, and a
     cProfile of the worker thread with --profile);
  C. tick-to-prediction latency (Kafka CreateTime of the input -> of the output) at a fixed offered
     rate, p50/p95/p99;
  K. the client ceiling: the same backlog through a bare consume->produce loop with the worker's
     own client and settings and guarantee (bare_loop.py: decode, one output of the worker's size
     per record, flush, commit or a transaction per batch; no model), before and after A; and the
     same loop with confluent-kafka where it is importable (an outside anchor, not a dependency);
  C also times when a read_committed reader sees each forecast (under exactly-once, only once its
     transaction commits; the CreateTime of the output is when it was sent);
  A, K and C run for each setup: Tansu at-least-once, Apache Kafka at-least-once, Apache Kafka
  exactly-once (transactions), each on a fresh private broker, warmed up first by
  the backlog sent through it once (a fresh JVM compiles its hot paths on the worker's cores);
  B. once, the same stream through a loop written the way the seed's consumer.py did it (one
     `model.predict` per message), for `--seed-ticks` scored messages.

    python bench/serving.py                 # full run -> bench/results/serving.json
    python bench/serving.py --brokers tansu # the embedded broker only (no Java needed)
    python bench/serving.py --smoke --out X # seconds-long smoke run (the test suite)

Uses the project's production model (run `dvc repro` first) and private brokers on free ports.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import re
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson
from bare_loop import confluent_loop, confluent_version, kafka_python_loop

from neuropredict import (  # noqa: E402  (sets quiet library defaults)
    adaptive,
    brokers,
    kafka_io,
    messages,
    producer,
    registry,
    retry,
    tracking,
)
from neuropredict.console import configure_logging  # noqa: E402
from neuropredict.forecaster import limit_threads  # noqa: E402
from neuropredict.settings.contracts import Topics  # noqa: E402
from neuropredict.settings.paths import paths
from neuropredict.settings.schema import load_params
from neuropredict.stream import metrics  # noqa: E402
from neuropredict.stream.predict import chunk_rows  # noqa: E402
from neuropredict.stream.worker import Worker  # noqa: E402

HERE = Path(__file__).resolve().parent
TOPICS = Topics()  # a private broker per setup: the default names
SEED_TOPIC = "bench_seed_predictions"
WARMUP_TOPIC = "bench_warmup"
BARE_TOPIC = "bench_bare_outputs"  # + the round: the bare loops' outputs
OVERLAPPED = ("model",)
SHADOW_ALIAS = "challenger"  # phase S: the worker also scores one version in shadow


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ticks", type=int, default=60_000, help="backlog size for the throughput phase")
    ap.add_argument("--copies", type=int, default=4, help="copies of each real symbol (AAPL, AAPL.2, ...)")
    ap.add_argument("--seed-ticks", type=int, default=300, help="scored messages for the per-message loop")
    ap.add_argument("--rate", type=float, default=1000.0, help="offered ticks/s for the latency phase")
    ap.add_argument("--rate-seconds", type=float, default=20.0, help="length of the latency phase")
    ap.add_argument("--profile", action="store_true", help="cProfile the worker thread in phase A")
    ap.add_argument("--brokers", default="tansu,apache", help="comma-separated: tansu, apache")
    ap.add_argument("--no-confluent", action="store_true", help="skip the confluent-kafka anchor even if importable")
    ap.add_argument("--no-intervals", action="store_true",
                    help="serve the production model without its interval calibration (what intervals cost)")
    ap.add_argument("--shadow-rounds", type=int, default=3,
                    help="phase S: rounds of the worker with one shadow version beside none, alternating (0: skip)")
    ap.add_argument("--endpoint-rounds", type=int, default=3,
                    help="phase E: rounds of the worker with its Prometheus endpoint scraped beside none, "
                         "alternating (0: skip)")
    ap.add_argument("--scrape-every-s", type=float, default=1.0, help="phase E: seconds between scrapes")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs, measures nothing")
    ap.add_argument("--out", type=Path, help="report path (default bench/results/serving[-smoke].json)")
    args = ap.parse_args()
    if args.smoke:
        args.ticks, args.copies, args.seed_ticks, args.rate_seconds, args.shadow_rounds = 1500, 2, 20, 2.0, 1
        args.endpoint_rounds = 1
    args.out = args.out or HERE / "results" / ("serving-smoke.json" if args.smoke else "serving.json")
    args.brokers = [b for b in args.brokers.split(",") if b]
    return args


def setups(brokers: list[str]) -> list[tuple[str, str]]:
    """(broker, guarantee): exactly-once only where the broker isolates transactions."""
    out = [("tansu", "at_least_once")] if "tansu" in brokers else []
    if "apache" in brokers:
        out += [("apache", "at_least_once"), ("apache", "exactly_once")]
    return out


def make_ticks(params, copies: int, limit: int, suffix: str = "") -> list[tuple[str, str, float]]:
    """Replayed real daily closes of every configured symbol, `copies` times under other names."""
    real, _ = producer.replay_period(params, paths(), 0, params.data.start)
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


def phase_model_ceiling(forecaster, ticks, batch_rows: int) -> dict:
    """The production model alone on the backlog's windows, cut as the worker cuts them (batches
    of max_poll_records, chunks on a model thread): windows/s with no Kafka at all."""
    from collections import defaultdict
    from concurrent.futures import ThreadPoolExecutor

    by_symbol: dict[str, list[float]] = defaultdict(list)
    for _, symbol, price in ticks:
        by_symbol[symbol].append(price)
    w = forecaster.window
    windows = [(np.lib.stride_tricks.sliding_window_view(np.asarray(p), w), s) for s, p in by_symbol.items() if len(p) >= w]
    rows = np.concatenate([v for v, _ in windows])
    symbols = [s for v, s in windows for _ in range(len(v))]
    pool = ThreadPoolExecutor(1, thread_name_prefix="model")
    started = time.perf_counter()
    for lo in range(0, len(rows), batch_rows):
        model_input = forecaster.prepare(rows[lo:lo + batch_rows], symbols[lo:lo + batch_rows])
        n = min(batch_rows, len(rows) - lo)
        for _ in forecaster.forecast_chunks(model_input, chunk_rows(n), pool):
            pass
    seconds = time.perf_counter() - started
    pool.shutdown()
    return {"windows": len(rows), "seconds": seconds, "model_ceiling_windows_per_s": len(rows) / seconds}


def warm_up_broker(params, bootstrap: str, ticks) -> None:
    """Send the backlog through a topic of its own and read it back, once: a fresh JVM broker
    compiles its hot paths (JIT) in its first seconds, on the cores the worker needs. A broker
    in production has long been warm, so that start-up cost is not part of what is measured."""
    out = kafka_io.producer(bootstrap, params.serving)
    for timestamp, symbol, price in ticks:
        out.send(WARMUP_TOPIC, key=symbol.encode(), value=messages.encode_tick(timestamp, symbol, price))
    out.flush()
    out.close()
    with kafka_io.TopicReader(bootstrap) as reader:
        reader.read_all([WARMUP_TOPIC])


def publish_backlog(params, bootstrap: str, ticks, topics: Topics = TOPICS) -> dict:
    return producer.publish(ticks, topics.prices, bootstrap=bootstrap, serving=params.serving)


def phase_throughput(params, bootstrap: str, ticks, version: str, profile: bool, topics: Topics = TOPICS,
                     shadow=None, metrics_port: int | None = None, sent: dict | None = None) -> tuple[Worker, dict]:
    """The worker on the backlog (published first unless `sent` says it already was)."""
    sent = sent or publish_backlog(params, bootstrap, ticks, topics)
    worker = Worker(params, bootstrap=bootstrap, topics=topics, report_to_mlflow=False, pinned_version=version)
    if shadow is not None:
        worker.shadows.pin(SHADOW_ALIAS, shadow)
    if metrics_port:
        worker.endpoint = metrics.Endpoint(worker, metrics_port, "127.0.0.1")
    worker.start()
    prof = cProfile.Profile() if profile else None

    def run() -> None:
        if prof:
            prof.enable()
        worker.run()
        if prof:
            prof.disable()

    thread = threading.Thread(target=run, name="worker-loop", daemon=True)
    cpu_before, process_before = thread_cpu_seconds(), time.process_time()
    thread.start()
    retry.wait_until(lambda: worker.stats.consumed >= len(ticks), 600, "the backlog to be scored", every_s=0.05)
    cpu_after, process_cpu = thread_cpu_seconds(), time.process_time() - process_before
    s = worker.stats
    wall = s.last_commit_at - s.first_data_at
    # the loop's own steps (idle: polls before the backlog arrived); the model call runs on the
    # model thread, overlapped with publishing, and shows up in the loop as model_wait
    steps = {k: v for k, v in s.seconds.items() if k not in ("idle", *OVERLAPPED)}
    busy = sum(steps.values())
    result = {
        "guarantee": worker.guarantee, "rewinds": s.rewinds,
        "ticks": len(ticks), "producer_ticks_per_s": sent["ticks_per_s"],
        "throughput_ticks_per_s": s.consumed / wall, "wall_s": wall, "batches": s.batches,
        "breakdown_seconds": dict(sorted(steps.items(), key=lambda kv: -kv[1])),
        "breakdown_pct": {k: 100 * v / busy for k, v in sorted(steps.items(), key=lambda kv: -kv[1])},
        "model_thread_seconds": {k: s.seconds.get(k, 0.0) for k in OVERLAPPED},
        # where the process's CPU went while it worked through the backlog (the GIL lets one thread
        # run Python at a time; TensorFlow's own threads compute without it)
        "process_cpu_seconds": process_cpu,
        "thread_cpu_seconds": {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after
                               if cpu_after[name] - cpu_before.get(name, 0.0) >= 0.01},
    }
    result["_thread"], result["_profile"] = thread, prof
    return worker, result


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds of each of this process's threads by name, numbers dropped (so a client's
    threads keep one name from run to run); Python's names where it has them. Linux only."""
    names = {str(t.native_id): t.name for t in threading.enumerate()}
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for tid in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else []:
        try:
            name = names.get(tid) or Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        name = re.sub(r"[-_.]?\d+", "", name)
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def output_template(forecaster, version: str) -> dict:
    """The fields of the worker's output message beyond the input's own, as it encodes them: the bare
    loops send the input merged with these, so their outputs weigh what the worker's do."""
    tick = messages.Tick("2024-01-02 16:00:00", "AAPL.2", 123.456789, 0.0)
    bounds = {f: 123.456789 for f in forecaster.interval_fields}
    value = messages.encode_prediction(tick, 123.456789, version, 3, 123456, "bench-host-12345-1", bounds)
    return {k: v for k, v in orjson.loads(value).items() if k not in ("timestamp", "symbol")}


def phase_client_ceiling(params, bootstrap: str, n: int, template: dict, transactional: bool, round_: int,
                         confluent: bool = False) -> dict:
    """K. the bare consume->produce loop over the backlog already in the input topic (a new group
    reads it from the start), into a topic of its own: kafka-python, or confluent-kafka."""
    sink = f"{BARE_TOPIC}-{'confluent' if confluent else 'kp'}-{round_}"
    kafka_io.ensure_topics(params.kafka, bootstrap, [sink])
    loop = confluent_loop if confluent else kafka_python_loop
    return loop(bootstrap, params.serving, TOPICS.prices, sink, n, template, transactional)


class VisibilityWatcher:
    """A read_committed reader of the output topic from its end, on a thread of its own: the wall
    clock (ms) at which each forecast, by its input (partition, offset), became visible to it."""

    def __init__(self, bootstrap: str, topic: str):
        from kafka import TopicPartition

        self.consumer = kafka_io.consumer(None, bootstrap, 50_000, fetch_max_wait_ms=10)
        parts = [TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic))]
        self.consumer.assign(parts)
        self.consumer.seek_to_end(*parts)
        for tp in parts:
            self.consumer.position(tp)  # resolve the end now, before any forecast of the phase
        self.seen_ms: dict[tuple[int, int], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="visibility")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            polled = self.consumer.poll(timeout_ms=50)
            now_ms = time.time() * 1000
            for records in polled.values():
                for r in records:
                    v = orjson.loads(r.value)
                    self.seen_ms.setdefault((v["input_partition"], v["input_offset"]), now_ms)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.consumer.close()


def phase_seed_loop(params, bootstrap: str, forecaster, n_scored: int) -> dict:
    """The seed's consumer.py, faithfully slow: json per message, model.predict per message."""
    import json as std_json
    from collections import defaultdict, deque

    consumer = kafka_io.consumer("bench-seed", bootstrap, max_poll_records=500)
    consumer.subscribe([TOPICS.prices])
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
                predicted = float(scaler.to_price(y[:, 0], window[:, -1], mu, sd)[0])
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


def phase_latency(params, bootstrap: str, worker: Worker, ticks, rate: float, seconds: float,
                  topics: Topics = TOPICS) -> dict:
    n = min(len(ticks), int(rate * seconds))
    since_ms = int(time.time() * 1000)
    before = worker.stats.consumed
    watcher = VisibilityWatcher(bootstrap, topics.predictions)
    sent = producer.publish(ticks[:n], topics.prices, bootstrap=bootstrap, rate=rate, serving=params.serving)
    retry.wait_until(lambda: worker.stats.consumed >= before + n, 60, "the latency phase's ticks", every_s=0.05)
    with kafka_io.TopicReader(bootstrap) as reader:
        created = {(r.partition, r.offset): r.timestamp
                   for r in reader.read_all([topics.prices]) if r.timestamp >= since_ms}
        outputs = [r for r in reader.read_all([topics.predictions]) if r.timestamp >= since_ms]
    retry.wait_until(lambda: len(watcher.seen_ms) >= len(outputs), 30, "the watcher to see every forecast")
    watcher.stop()
    lat, visible = [], []
    for r in outputs:
        v = json.loads(r.value)
        where = (v["input_partition"], v["input_offset"])
        t_in = created.get(where)
        if t_in is not None:
            lat.append(r.timestamp - t_in)
            if where in watcher.seen_ms:
                visible.append(watcher.seen_ms[where] - t_in)
    return {"offered_ticks_per_s": rate, "achieved_offer_ticks_per_s": sent["ticks_per_s"],
            "seconds": sent["seconds"], **percentiles(lat), "visible_ms": percentiles(visible)}


def phase_shadow(params, ticks, version: str, shadow, rounds: int, rate: float, seconds: float) -> dict:
    """S. the worker with one shadow version beside none, alternating in rounds."""
    out = alternate(params, ticks, version, rounds, rate, seconds, {"none": {}, "one": {"shadow": shadow}})
    return {**out, "shadow_version": shadow.version,
            "one_of_none_throughput": out["median"]["one"]["throughput_ticks_per_s"]
            / out["median"]["none"]["throughput_ticks_per_s"],
            "one_over_none_p99": out["median"]["one"]["p99_ms"] / out["median"]["none"]["p99_ms"]}


def phase_endpoint(params, ticks, version: str, rounds: int, rate: float, seconds: float, every_s: float) -> dict:
    """E. the worker with its Prometheus endpoint scraped every `every_s` (a harder load than
    Prometheus' 5 s) beside no endpoint, alternating in rounds."""
    out = alternate(params, ticks, version, rounds, rate, seconds, {"off": {}, "on": {"scrape_every_s": every_s}})
    scrapes = [x for r in out["rounds"]["on"] for x in r["scrape_ms"]]
    return {**out, "scrape_every_s": every_s, "scrape_ms": percentiles(scrapes),
            "on_of_off_throughput": out["median"]["on"]["throughput_ticks_per_s"]
            / out["median"]["off"]["throughput_ticks_per_s"],
            "on_over_off_p99": out["median"]["on"]["p99_ms"] / out["median"]["off"]["p99_ms"]}


def alternate(params, ticks, version: str, rounds: int, rate: float, seconds: float, variants: dict) -> dict:
    """Each variant of the worker in turn, `rounds` times, on one embedded broker, each run on
    topics of its own: backlog throughput, then latency at a fixed rate. A variant may have a
    shadow version, or an endpoint scraped every scrape_every_s."""
    out: dict[str, list] = {kind: [] for kind in variants}
    live = make_ticks(params, 1, 10**9, suffix=".live")
    with tempfile.TemporaryDirectory(prefix="bench-alternate-") as tmp:
        broker = brokers.start_scratch_broker("tansu", Path(tmp), params.kafka, topics=TOPICS)
        try:
            warm_up_broker(params, broker.bootstrap, ticks)
            for r in range(rounds):
                for kind, variant in variants.items():
                    topics = Topics(prefix=f"round{r}-{kind}.")
                    kafka_io.ensure_topics(params.kafka, broker.bootstrap, topics)
                    scraper = Scraper(variant.get("scrape_every_s"))
                    worker, a = phase_throughput(params, broker.bootstrap, ticks, version, False, topics,
                                                 variant.get("shadow"), scraper.port)
                    c = phase_latency(params, broker.bootstrap, worker, live, rate, seconds, topics)
                    worker.stop_event.set()
                    a.pop("_thread").join(30)
                    scraper.stop()
                    shadowed = sum(s.n for (alias, _), s in worker.stats.by_alias.items() if alias == SHADOW_ALIAS)
                    out[kind].append({"throughput_ticks_per_s": a["throughput_ticks_per_s"], "p99_ms": c["p99"],
                                      "p50_ms": c["p50"], "shadow_scored": shadowed, "scrape_ms": scraper.took_ms,
                                      "shadow_seconds": {k: v for k, v in worker.stats.seconds.items()
                                                         if k.startswith("shadow_")}})
                    print(f"   round {r + 1} {kind:>4}: {a['throughput_ticks_per_s']:,.0f} ticks/s, "
                          f"p99 {c['p99']:.1f} ms at {rate:g}/s", flush=True)
        finally:
            broker.stop()
    med = {k: {m: float(np.median([x[m] for x in v])) for m in ("throughput_ticks_per_s", "p99_ms", "p50_ms")}
           for k, v in out.items()}
    return {"rounds": out, "median": med}


class Scraper:
    """Scrapes a worker's endpoint every `every_s` from a thread of its own, timing each scrape
    (None: no endpoint). Starts with the first answer; stop() ends it."""

    def __init__(self, every_s: float | None):
        from neuropredict import procs

        self.every_s, self.took_ms = every_s, []
        self.port = procs.free_ports(1)[0] if every_s else None
        self._stop = threading.Event()
        if every_s:
            threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        import urllib.request

        while not self._stop.wait(self.every_s):
            began = time.perf_counter()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read()
            except OSError:  # not listening yet, or already closed
                continue
            self.took_ms.append(1000 * (time.perf_counter() - began))

    def stop(self) -> None:
        self._stop.set()


def _shadow_model(name: str, version: str, intervals: bool):
    """The production model loaded a second time (its own object), served in shadow under a label
    of its own: what one shadow version costs, whatever its weights."""
    import mlflow.pyfunc

    forecaster = mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model().forecaster
    if not intervals:
        forecaster.calibration = None
    return registry.ServedModel(version=f"{version}-shadow-copy", forecaster=forecaster)


def _serve_point_forecasts_only() -> None:
    """Every load of a model (here and in the worker) drops its calibration, as for a version
    registered before intervals existed: no bounds computed, published or scored."""
    load = registry.load

    def without_intervals(*args, **kwargs):
        served = load(*args, **kwargs)
        served.forecaster.calibration = None
        return served

    registry.load = without_intervals


def production_version(params) -> str | None:
    """The project's production version; None (and what to run) when there is none."""
    version = registry.alias_version(params.register.model_name)
    if version is None:
        print(f"no {params.register.model_name}@production: run `dvc repro` first", file=sys.stderr)
    return version


def main() -> int:
    args = parse_args()
    configure_logging()
    params = load_params()
    name = params.register.model_name
    version = production_version(params)
    if version is None:
        return 1
    limit_threads(params.serving.model_threads)  # as a serving process does, before TF starts
    if args.no_intervals:
        _serve_point_forecasts_only()
    loaded = registry.load(name, version=version)
    ticks = make_ticks(params, args.copies, args.ticks)
    symbols = len({t[1] for t in ticks})
    print(f"M. the model alone on the windows of {len(ticks)} ticks ...", flush=True)
    loaded.forecaster.warm_up()
    template = output_template(loaded.forecaster, version)
    with_confluent = not args.no_confluent and confluent_version() is not None
    m = phase_model_ceiling(loaded.forecaster, ticks, params.serving.max_poll_records)
    print(f"   {m['model_ceiling_windows_per_s']:,.0f} windows/s", flush=True)
    runs, seed, prof, last_worker = {}, None, None, None
    for broker_kind, guarantee in setups(args.brokers):
        label = f"{broker_kind}/{guarantee}"
        run_params = params.model_copy(update={"serving": params.serving.model_copy(update={"guarantee": guarantee})})
        with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
            broker = brokers.start_scratch_broker(broker_kind, Path(tmp), params.kafka, topics=TOPICS)
            try:
                kafka_io.ensure_topics(params.kafka, broker.bootstrap, (SEED_TOPIC, WARMUP_TOPIC))
                warm_up_broker(params, broker.bootstrap, ticks)
                sent = publish_backlog(run_params, broker.bootstrap, ticks)
                transactional = guarantee == "exactly_once"
                bare = [phase_client_ceiling(run_params, broker.bootstrap, len(ticks), template, transactional, 0)]
                print(f"K. {label}: bare kafka-python loop {bare[0]['ticks_per_s']:,.0f} ticks/s", flush=True)
                print(f"A. {label}: worker on a backlog of {len(ticks)} ticks of {symbols} symbols ...", flush=True)
                worker, a = phase_throughput(run_params, broker.bootstrap, ticks, version, args.profile, sent=sent)
                print(f"   {a['throughput_ticks_per_s']:,.0f} ticks/s end to end ({a['guarantee']})", flush=True)
                bare.append(phase_client_ceiling(run_params, broker.bootstrap, len(ticks), template, transactional, 1))
                print(f"K. {label}: bare kafka-python loop again {bare[1]['ticks_per_s']:,.0f} ticks/s", flush=True)
                anchor = None
                if with_confluent:
                    anchor = phase_client_ceiling(run_params, broker.bootstrap, len(ticks), template, transactional,
                                                  2, confluent=True)
                    print(f"K. {label}: bare confluent-kafka loop {anchor['ticks_per_s']:,.0f} ticks/s", flush=True)
                if seed is None:
                    print(f"B. the seed's per-message loop on {args.seed_ticks} scored ticks ...", flush=True)
                    seed = phase_seed_loop(params, broker.bootstrap, loaded.forecaster, args.seed_ticks)
                    print(f"   {seed['seed_loop_ticks_per_s']:,.1f} ticks/s", flush=True)
                print(f"C. {label}: latency at {args.rate:g} ticks/s offered for {args.rate_seconds:g} s ...", flush=True)
                # symbols of their own (the worker keeps the backlog's), in time order as a live feed
                c = phase_latency(run_params, broker.bootstrap, worker, make_ticks(params, 1, 10**9, suffix=".live"),
                                  args.rate, args.rate_seconds)
                print(f"   p50 {c['p50']:.1f} ms, p99 {c['p99']:.1f} ms", flush=True)
                worker.stop_event.set()
                a.pop("_thread").join(30)
                prof = prof or a.pop("_profile")
                a.pop("_profile", None)
            finally:
                broker.stop()
        saturation = percentiles(list(worker.stats.latencies_ms)[: len(ticks)])
        ceiling = float(np.mean([b["ticks_per_s"] for b in bare]))
        runs[label] = {"broker": broker_kind, "guarantee": a["guarantee"],
                       "throughput_ticks_per_s": a["throughput_ticks_per_s"],
                       "of_model_ceiling": a["throughput_ticks_per_s"] / m["model_ceiling_windows_per_s"],
                       "client_ceiling_ticks_per_s": ceiling,
                       "of_client_ceiling": a["throughput_ticks_per_s"] / ceiling,
                       "client_ceiling_rounds": bare,
                       "confluent_ticks_per_s": anchor and anchor["ticks_per_s"], "confluent_phase": anchor,
                       "latency_ms": {k: c[k] for k in ("p50", "p95", "p99", "n", "offered_ticks_per_s",
                                                        "achieved_offer_ticks_per_s")},
                       "visible_latency_ms": c["visible_ms"],
                       "saturation_latency_to_commit_ms": saturation, "throughput_phase": a, "latency_phase": c}
        last_worker = worker
    shadow = None
    if args.shadow_rounds and "tansu" in args.brokers:
        print(f"S. one shadow version beside none, {args.shadow_rounds} alternating rounds (tansu) ...", flush=True)
        alo = params.model_copy(update={"serving": params.serving.model_copy(update={"guarantee": "at_least_once"})})
        shadow = phase_shadow(alo, ticks, version, _shadow_model(name, version, not args.no_intervals),
                              args.shadow_rounds, args.rate, args.rate_seconds)
    endpoint = None
    if args.endpoint_rounds and "tansu" in args.brokers:
        print(f"E. the Prometheus endpoint scraped every {args.scrape_every_s:g} s beside none, "
              f"{args.endpoint_rounds} alternating rounds (tansu) ...", flush=True)
        alo = params.model_copy(update={"serving": params.serving.model_copy(update={"guarantee": "at_least_once"})})
        endpoint = phase_endpoint(alo, ticks, version, args.endpoint_rounds, args.rate, args.rate_seconds,
                                  args.scrape_every_s)
    report = ratios(runs, shadow, endpoint) | {
        "model_ceiling_windows_per_s": m["model_ceiling_windows_per_s"],
        "seed_loop_ticks_per_s": seed["seed_loop_ticks_per_s"],
        "runs": runs, "model_ceiling_phase": m, "seed_loop_phase": seed, "shadow_phase": shadow,
        "endpoint_phase": endpoint,
        "latency_offered_ticks_per_s": args.rate,
        "model": {"name": name, "version": version, "window": loaded.forecaster.window,
                  "cell": registry.version_tags(name, version).get("cell"), "intervals": not args.no_intervals,
                  "online_intervals": adaptive.is_online(loaded.forecaster.calibration)},
        "settings": {k: getattr(params.serving, k) for k in ("max_poll_records", "producer_linger_ms",
                                                              "producer_batch_bytes", "compression",
                                                              "commit_interval_ms")},
        "symbols": symbols, "smoke": args.smoke, "apache_kafka": _apache_version(args.brokers),
        "clients": {"kafka-python": _kafka_python_version(),
                    "confluent-kafka": confluent_version() if with_confluent else None,
                    "note": "confluent-kafka is an outside anchor for the bare loop only, not a dependency"},
        "output_bytes": len(orjson.dumps({**template, "timestamp": "2024-01-02 16:00:00", "symbol": "AAPL.2",
                                          "price": 123.456789})),
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "measured": tracking.measured(" ".join(["python", *sys.argv])),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    # the headline figures of the first setup (the default broker), as before
    first = next(iter(runs.values()))
    report |= {"throughput_ticks_per_s": first["throughput_ticks_per_s"], "latency_ms": first["latency_ms"],
               "speedup": first["throughput_ticks_per_s"] / seed["seed_loop_ticks_per_s"],
               "throughput_phase": first["throughput_phase"]}
    del last_worker
    if prof:
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(20)
        report["profile_top_tottime"] = text.getvalue().splitlines()[:45]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"report: {args.out}")
    return 0


def ratios(runs: dict, shadow: dict | None = None, endpoint: dict | None = None) -> dict:
    """The issues' targets, as ratios of one run: each setup's worker of its client ceiling; Apache
    at-least-once of the model ceiling, exactly-once of at-least-once (throughput), exactly-once p99
    over at-least-once p99 (output CreateTime, and when a read_committed reader sees it); one
    shadow version beside none (throughput, p99); the metrics endpoint scraped beside none."""
    out = {f"{label.replace('/', '_')}_of_client_ceiling": run["of_client_ceiling"] for label, run in runs.items()}
    alo, eos = runs.get("apache/at_least_once"), runs.get("apache/exactly_once")
    if alo and eos:
        out |= {"apache_at_least_once_of_model_ceiling": alo["of_model_ceiling"],
                "exactly_once_of_at_least_once_throughput": eos["throughput_ticks_per_s"] / alo["throughput_ticks_per_s"],
                "exactly_once_over_at_least_once_p99": eos["latency_ms"]["p99"] / alo["latency_ms"]["p99"],
                "exactly_once_over_at_least_once_visible_p99": eos["visible_latency_ms"]["p99"]
                / alo["visible_latency_ms"]["p99"]}
    if shadow:
        out |= {"one_shadow_of_none_throughput": shadow["one_of_none_throughput"],
                "one_shadow_over_none_p99": shadow["one_over_none_p99"]}
    if endpoint:
        out |= {"endpoint_on_of_off_throughput": endpoint["on_of_off_throughput"],
                "endpoint_on_over_off_p99": endpoint["on_over_off_p99"]}
    return {"ratios": out} if out else {}


def _kafka_python_version() -> str:
    import kafka

    return kafka.__version__


def _apache_version(brokers: list[str]) -> str | None:
    from neuropredict import apache_kafka

    return apache_kafka.version() if "apache" in brokers else None


def table(r: dict) -> str:
    lines = ["", f"serving benchmark ({r['symbols']} symbols, model v{r['model']['version']} "
                 f"{r['model']['cell']} W={r['model']['window']}, {r['machine']['cpu_count']} CPUs shared with the broker)",
             f"{'model ceiling (model call alone)':<44}{r['model_ceiling_windows_per_s']:>10,.0f} windows/s",
             f"{'seed loop (model.predict per message)':<44}{r['seed_loop_ticks_per_s']:>10,.1f} ticks/s",
             f"{'setup':<28}{'ticks/s':>9}{'of model':>10}{'client':>9}{'of client':>11}{'confluent':>11}"
             f"   latency at {r['latency_offered_ticks_per_s']:g} ticks/s (sent; visible)"]
    for label, run in r["runs"].items():
        lat, vis = run["latency_ms"], run["visible_latency_ms"]
        anchor = f"{run['confluent_ticks_per_s']:>11,.0f}" if run["confluent_ticks_per_s"] else f"{'-':>11}"
        lines.append(f"{label:<28}{run['throughput_ticks_per_s']:>9,.0f}{100 * run['of_model_ceiling']:>8.0f} %"
                     f"{run['client_ceiling_ticks_per_s']:>9,.0f}{100 * run['of_client_ceiling']:>9.0f} %{anchor}"
                     f"   p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} ms; p50 {vis['p50']:.1f} p99 {vis['p99']:.1f} ms")
    for key, value in r.get("ratios", {}).items():
        lines.append(f"  {key:<50}{value:>8.2f}")
    a = r["throughput_phase"]
    lines.append(f"where the worker's time goes ({next(iter(r['runs']))}, backlog phase):")
    for step, pct in a["breakdown_pct"].items():
        lines.append(f"  {step:<11}{a['breakdown_seconds'][step]:>7.2f} s {pct:>6.1f} %")
    lines.append("  on the model thread, overlapped with publishing: "
                 + ", ".join(f"{k} {v:.2f} s" for k, v in a["model_thread_seconds"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
