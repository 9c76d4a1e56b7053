"""Reading topics back, running workers and checking what they published, for the serving tests."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import numpy as np

from neuropredict import config, kafka_io, messages, producer


def read_topic(bootstrap: str, topic: str) -> list:
    """Every record of a topic, with the product's own reader."""
    with kafka_io.TopicReader(bootstrap) as reader:
        return reader.read_all([topic])


def replay(root, params, start="2024-07-01", symbols=None, interval="1d") -> list:
    """Real ticks of the project's data (the snapshot for symbols it lacks), with a window of lead-in."""
    frames, _ = producer.replay_frames(symbols or params.data.symbols, interval, root / "data/raw",
                                       root / "data/snapshot")
    return producer.replay_ticks(frames, interval, start, params.data.end, params.featurize.window)


def inputs(bootstrap: str) -> dict:
    """(partition, offset) -> Tick or reason, for everything in stock_prices."""
    return {(r.partition, r.offset): messages.parse_tick(r.value)
            for r in read_topic(bootstrap, config.PRICES_TOPIC)}


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


def predictions(bootstrap: str) -> list[dict]:
    return [messages.decode(r.value) for r in read_topic(bootstrap, config.PREDICTIONS_TOPIC)]


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


def committed_offsets(bootstrap: str, group: str = config.CONSUMER_GROUP,
                      topic: str = config.PRICES_TOPIC) -> dict[int, int]:
    from kafka import TopicPartition

    c = kafka_io.consumer(group, bootstrap)
    try:
        parts = sorted(c.partitions_for_topic(topic) or [])
        found = {p: c.committed(TopicPartition(topic, p)) for p in parts}
        return {p: o for p, o in found.items() if o is not None}
    finally:
        c.close()


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


def assert_forecasts_match(outs: list[dict], expected: dict, rel: float = 1e-6) -> None:
    wrong = [(o["input_partition"], o["input_offset"], o["predicted_price"],
              expected.get((o["input_partition"], o["input_offset"])))
             for o in outs
             if not np.isclose(o["predicted_price"], expected.get((o["input_partition"], o["input_offset"]), np.nan),
                               rtol=rel, atol=0)]
    assert not wrong, f"{len(wrong)} of {len(outs)} forecasts differ from offline, e.g. {wrong[:3]}"


def wait_for(predicate, timeout_s: float = 90, every_s: float = 0.25, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class TopicCounter:
    """Counts a topic's records as they arrive, with one consumer kept open (cheap to poll)."""

    def __init__(self, bootstrap: str, topic: str):
        self.batches = kafka_io.follow(bootstrap, [topic])
        self.count = 0

    def __call__(self) -> int:
        self.count += len(next(self.batches))
        return self.count

    def close(self) -> None:
        self.batches.close()


class WorkerThread:
    """A real Worker in a thread of the test process; stop() ends it like SIGTERM would."""

    def __init__(self, params, bootstrap: str, **kw):
        from neuropredict.stream.worker import Worker

        self.worker = Worker(params, bootstrap=bootstrap, **kw)
        self.worker.start()
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()

    @property
    def stats(self):
        return self.worker.stats

    def stop(self, timeout_s: float = 60) -> None:
        self.worker.stop_event.set()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "worker did not stop"


class Sender(threading.Thread):
    """Publishes ticks at a fixed rate in the background, like a live feed."""

    def __init__(self, ticks, bootstrap: str, rate: float, serving=None):
        super().__init__(daemon=True)
        self.kwargs = dict(ticks=ticks, bootstrap=bootstrap, rate=rate, serving=serving)

    def run(self) -> None:
        producer.publish(**self.kwargs)


def signal_mid_stream(root, env: dict, bootstrap: str, ticks, serving, sig, log_path,
                      idle_timeout_s: float = 6) -> tuple[int, object]:
    """A worker process scores a live stream; `sig` hits it after its first 100 forecasts; a
    second worker then runs until the stream has been idle. Returns (forecasts published when
    the signal hit, the second worker's finished process)."""
    import signal as _signal
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "neuropredict.cli", "serve", "--idle-timeout-s", str(idle_timeout_s)]
    with open(log_path, "w") as log_file:
        first = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=log_file)
    sender = Sender(ticks, bootstrap, rate=150, serving=serving)
    try:
        wait_for(lambda: "assigned partitions" in log_path.read_text(), what="the first worker to join")
        sender.start()
        published = TopicCounter(bootstrap, config.PREDICTIONS_TOPIC)
        wait_for(lambda: published() > 100, every_s=0.05, what="the first worker to publish")
        first.send_signal(sig)
        code = first.wait(60)
        assert code == 0 or sig == _signal.SIGKILL, f"exit status {code} after {sig!r}"
        stopped_at = len(predictions(bootstrap))
        second = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=240)
        assert second.returncode == 0, second.stderr[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
        sender.join()
    return stopped_at, second


def promote_mid_stream(params, bootstrap: str, ticks, version: str, rate: float, after: int = 100):
    """A worker scores a live stream; `version` becomes production after its first `after`
    forecasts; returns the stopped worker once it has consumed the whole stream."""
    from neuropredict import registry

    w = WorkerThread(params, bootstrap)
    wait_for(lambda: w.worker.consumer.assignment(), what="the worker to join")
    sender = Sender(ticks, bootstrap, rate=rate, serving=params.serving)
    sender.start()
    wait_for(lambda: w.stats.predicted > after, what="the first forecasts")
    registry.promote(params.register.model_name, version)
    sender.join()
    wait_for(lambda: w.stats.consumed >= len(ticks), what="the whole stream")
    w.stop()
    return w
