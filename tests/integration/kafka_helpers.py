"""Reading a test's topics back, running workers and checking what they published (serving tests).
Each helper takes the test's Stream (tests/conftest.py): its broker, topics and group."""

from __future__ import annotations

import threading
from collections import defaultdict

import numpy as np
import pandas as pd

from neuropredict import kafka_io, messages, producer, retry
from neuropredict.settings.paths import Paths
from neuropredict.stream import status


def read_topic(stream, topic: str) -> list:
    """Every record of one of the stream's topics, with the product's own reader."""
    with kafka_io.TopicReader(stream.bootstrap) as reader:
        return reader.read_all([topic])


def replay(root, params, start="2024-07-01", symbols=None, interval="1d", end=None) -> list:
    """Real ticks of the project's data (the snapshot for symbols it lacks), with a window of lead-in,
    from start to end (default: the data's last session)."""
    ticks, _ = producer.replay_period(params, Paths(root), params.featurize.window, start, end, symbols, interval)
    return ticks


def publish(stream, ticks, **kw) -> dict:
    """Ticks into the stream's input topic."""
    return producer.publish(ticks, stream.topics.prices, bootstrap=stream.bootstrap, **kw)


def inputs(stream) -> dict:
    """(partition, offset) -> Tick or reason, for everything in the input topic."""
    return {(r.partition, r.offset): messages.parse_tick(r.value) for r in read_topic(stream, stream.topics.prices)}


def warmup_positions(inputs: dict, window: int) -> set:
    """The first W-1 valid ticks of each symbol: the only inputs allowed to produce nothing."""
    seen, warm = defaultdict(int), set()
    for where in sorted(inputs):
        tick = inputs[where]
        if not isinstance(tick, str):
            seen[tick.symbol] += 1
            if seen[tick.symbol] < window:
                warm.add(where)
    return warm


def predictions(stream) -> list[dict]:
    return [messages.decode(r.value) for r in read_topic(stream, stream.topics.predictions)]


def dead_letters(stream) -> list:
    return read_topic(stream, stream.topics.dead_letters)


def positions(outs: list[dict]) -> list[tuple[int, int]]:
    """The input (partition, offset) of each prediction: duplicates show as repeats."""
    return [(o["input_partition"], o["input_offset"]) for o in outs]


def end_offsets(inputs: dict) -> dict[int, int]:
    """Each partition's end (last offset + 1), counted from the records themselves (the embedded
    broker's own end_offsets answer is unreliable)."""
    ends: dict[int, int] = {}
    for partition, offset in inputs:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return ends


def committed_offsets(stream) -> dict[int, int]:
    """The serving group's committed offset of each input partition (asked of the broker's admin
    API: a reader must not join or disturb the group it looks at)."""
    client = kafka_io.admin(stream.bootstrap)
    try:
        found = client.list_group_offsets(stream.topics.group).get(stream.topics.group, {})
    finally:
        client.close()
    return {tp.partition: meta.offset for tp, meta in found.items()
            if tp.topic == stream.topics.prices and meta.offset >= 0}


def drained(stream) -> bool:
    """The serving group has committed every input the topic holds (nothing left to score)."""
    ends, committed = end_offsets(inputs(stream)), committed_offsets(stream)
    return bool(ends) and all(committed.get(p, 0) == ends.get(p, 0) for p in set(ends) | set(committed))


def expected_forecasts(inputs: dict, forecaster, window: int | None = None) -> dict[tuple[int, int], float]:
    """What a correct worker forecasts at each input: the model on the symbol's last W valid
    prices (in partition/offset order), computed offline with the same forecaster."""
    w = window or forecaster.window
    by_symbol: dict[str, list] = defaultdict(list)
    for where in sorted(inputs):
        tick = inputs[where]
        if not isinstance(tick, str):
            by_symbol[tick.symbol].append((where, tick.price))
    out = {}
    for symbol, rows in by_symbol.items():
        prices = np.array([p for _, p in rows])
        if len(prices) < w:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(prices, w)
        values = forecaster.predict_next(windows, [symbol] * len(windows))
        out.update({rows[w - 1 + i][0]: float(v) for i, v in enumerate(values)})
    return out


def expected_bounds(inputs: dict, forecaster) -> dict[tuple[int, int], dict[str, float]]:
    """The intervals a correct worker serves at each input: the model's on the symbol's last W
    valid prices, their quantiles tracked online from the first forecast on (adaptive.serve)."""
    from neuropredict import adaptive

    by_symbol: dict[str, list] = defaultdict(list)
    for where in sorted(inputs):
        if not isinstance(inputs[where], str):
            by_symbol[inputs[where].symbol].append((where, inputs[where].price))
    out = {}
    for symbol, rows in by_symbol.items():
        prices, w = np.array([p for _, p in rows]), forecaster.window
        if len(prices) < w:
            continue
        forecast = forecaster.forecast(np.lib.stride_tricks.sliding_window_view(prices, w), [symbol] * (len(prices) - w + 1))
        frame = pd.DataFrame({"symbol": symbol, "time": np.arange(len(forecast.price)), "persistence": prices[w - 1:],
                              "actual": np.append(prices[w:], np.nan), **forecast.bounds})
        served = adaptive.serve(frame, forecaster.calibration)
        fields = forecaster.interval_fields
        out.update({rows[w - 1 + i][0]: dict(zip(fields, values)) for i, values in
                    enumerate(served[fields].to_numpy().tolist())})
    return out


def assert_bounds_match(outs: list[dict], expected: dict, rel: float = 1e-6) -> None:
    """Every published interval bound as expected_bounds says (a lost online quantile fails this)."""
    wrong = [(o["input_partition"], o["input_offset"], field, o[field], want)
             for o in outs for field, want in expected[(o["input_partition"], o["input_offset"])].items()
             if not np.isclose(o[field], want, rtol=rel, atol=0)]
    assert not wrong, f"{len(wrong)} bounds differ from offline, e.g. {wrong[:3]}"


def assert_forecasts_match(outs: list[dict], expected: dict, rel: float = 1e-6) -> None:
    wrong = [(o["input_partition"], o["input_offset"], o["predicted_price"],
              expected.get((o["input_partition"], o["input_offset"])))
             for o in outs
             if not np.isclose(o["predicted_price"], expected.get((o["input_partition"], o["input_offset"]), np.nan),
                               rtol=rel, atol=0)]
    assert not wrong, f"{len(wrong)} of {len(outs)} forecasts differ from offline, e.g. {wrong[:3]}"


def wait_for(predicate, timeout_s: float = 90, every_s: float = 0.25, what: str = "condition") -> None:
    retry.wait_until(predicate, timeout_s, what, every_s, error=AssertionError)


class TopicCounter:
    """Counts a topic's records as they arrive, with one consumer kept open (cheap to poll)."""

    def __init__(self, stream, topic: str):
        self.batches = kafka_io.follow(stream.bootstrap, [topic])
        self.count = 0

    def __call__(self) -> int:
        self.count += len(next(self.batches))
        return self.count

    def close(self) -> None:
        self.batches.close()


class WorkerThread:
    """A real Worker in a thread of the test process, on the stream's topics; stop() ends it like
    SIGTERM would."""

    def __init__(self, params, stream, **kw):
        from neuropredict.stream.worker import Worker

        self.worker = Worker(params, bootstrap=stream.bootstrap, topics=stream.topics, **kw)
        self.worker.start()
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()

    @property
    def stats(self):
        return self.worker.stats

    def owned(self) -> set[int]:
        """The partitions it owns, from the status it exposes (serving)."""
        st = self.worker.status
        return set(st.partitions) if st.phase == status.SERVING else set()

    def stop(self, timeout_s: float = 60) -> None:
        self.worker.stop_event.set()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "worker did not stop"


class Sender(threading.Thread):
    """Publishes ticks at a fixed rate in the background, like a live feed."""

    def __init__(self, ticks, stream, rate: float, serving=None):
        super().__init__(daemon=True)
        self.kwargs = dict(ticks=ticks, topic=stream.topics.prices, bootstrap=stream.bootstrap, rate=rate,
                           serving=serving)

    def run(self) -> None:
        producer.publish(**self.kwargs)


def worker_process(root, env: dict, stream, log_path, *args: str):
    """`neuropredict serve` on the stream's topics, its status written beside its log."""
    import subprocess
    import sys

    env = {**env, **stream.env(), "NEUROPREDICT_WORKER_STATUS": str(log_path.with_suffix(".status.json"))}
    with open(log_path, "w") as log_file:
        return subprocess.Popen([sys.executable, "-m", "neuropredict.cli", "serve", *args], cwd=root, env=env,
                                stdout=subprocess.DEVNULL, stderr=log_file)


def serving(log_path) -> bool:
    """Whether the worker logging to log_path says (in its status file) that it owns partitions."""
    return status.read(log_path.with_suffix(".status.json")).get("phase") == status.SERVING


def covered(stream, window: int) -> bool:
    """Every input of the stream forecast or warm-up (nothing lost)?"""
    found = inputs(stream)
    return set(positions(predictions(stream))) | warmup_positions(found, window) == set(found)


def serve_until_covered(root, env: dict, stream, window: int, log_path, fed=lambda: True):
    """A worker process that serves until the feed is done (`fed()`) and every input is covered,
    then gets SIGTERM (it finishes its batch and commits); returns it finished, its log as stderr."""
    import signal as _signal
    import subprocess

    proc = worker_process(root, env, stream, log_path, "--idle-timeout-s", "300")
    try:
        wait_for(lambda: proc.poll() is not None or (fed() and covered(stream, window)), timeout_s=240, every_s=1,
                 what="the worker to cover every input")
        proc.send_signal(_signal.SIGTERM)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, log_path.read_text()[-3000:]
    return subprocess.CompletedProcess(proc.args, code, "", log_path.read_text())


def signal_mid_stream(root, env: dict, stream, ticks, serving_params, sig, log_path,
                      window: int) -> tuple[int, object]:
    """A worker process scores a live stream; `sig` hits it after its first 100 forecasts; a
    second worker then runs until every input is covered. Returns (forecasts published when the
    signal hit, the second worker's finished process, its log as stderr)."""
    import signal as _signal

    first = worker_process(root, env, stream, log_path, "--idle-timeout-s", "300")
    sender = Sender(ticks, stream, rate=150, serving=serving_params)
    try:
        wait_for(lambda: serving(log_path), 240, what="the first worker to join")  # a loaded machine: TF's start
        sender.start()
        published = TopicCounter(stream, stream.topics.predictions)
        wait_for(lambda: published() > 100, every_s=0.05, what="the first worker to publish")
        first.send_signal(sig)
        code = first.wait(60)
        assert code == 0 or sig == _signal.SIGKILL, f"exit status {code} after {sig!r}"
        stopped_at = len(predictions(stream))
        second = serve_until_covered(root, env, stream, window, log_path.with_name("second.log"),
                                     fed=lambda: not sender.is_alive())
    finally:
        if first.poll() is None:
            first.kill()
        sender.join()
    return stopped_at, second


def promote_mid_stream(params, stream, ticks, version: str, rate: float, after: int = 100):
    """A worker scores a live stream; `version` becomes production after its first `after`
    forecasts; returns the stopped worker once it has consumed the whole stream."""
    from neuropredict import promotions
    from neuropredict.settings.contracts import PRODUCTION_ALIAS

    w = WorkerThread(params, stream)
    wait_for(lambda: w.owned(), what="the worker to join")
    sender = Sender(ticks, stream, rate=rate, serving=params.serving)
    sender.start()
    wait_for(lambda: w.stats.predicted > after, what="the first forecasts")
    promotions.move(params.register.model_name, PRODUCTION_ALIAS, version, "force", "a test promotes mid-stream")
    sender.join()
    wait_for(lambda: w.stats.consumed >= len(ticks), what="the whole stream")
    w.stop()
    return w
