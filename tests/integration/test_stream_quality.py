"""Bad input on a running worker: oversized records, transient broker failures, ticks that break the
data-quality rules, a lasting new price level, and ticks whose key is not their symbol."""

import os
import signal
import time

import numpy as np
import pytest

from neuropredict import brokers, kafka_io, messages, registry, stream_report
from neuropredict.evaluation import score_rows
from neuropredict.messages import Tick
from neuropredict.settings.contracts import Topics
from tests.conftest import Stream, copy_with_params
from tests.integration.kafka_helpers import (
    WorkerThread,
    assert_forecasts_match,
    dead_letters,
    expected_forecasts,
    inputs,
    positions,
    predictions,
    publish,
    read_topic,
    replay,
    wait_for,
    warmup_positions,
)

pytestmark = pytest.mark.slow


def _project(trained_project, tmp_path, use_project, **serving):
    root, params = copy_with_params(trained_project, tmp_path / "copy", {"serving": serving})
    use_project(root)
    return root, params


def _forecaster(params):
    return registry.load(params.register.model_name).forecaster


def _send(stream, records, rate=0.0, **settings):
    """(key, value) pairs into the stream's input topic, in order, at `rate` records/s (0: at once)."""
    out = kafka_io.producer(stream.bootstrap, **settings)
    started = time.perf_counter()
    for i, (key, value) in enumerate(records):
        out.send(stream.topics.prices, key=key, value=value)
        if rate:
            time.sleep(max(0.0, (i + 1) / rate - (time.perf_counter() - started)))
    out.flush()
    out.close()


def _tick_record(t: Tick, key: bytes | None = b"") -> tuple:
    return (t.symbol.encode() if key == b"" else key), messages.encode_tick(t.timestamp, t.symbol, t.price)


def _dead_letters(stream):
    return [(messages.header_dict(r.headers), r.key, r.value) for r in dead_letters(stream)]


def test_an_oversized_record_leaves_a_truncated_dead_letter_and_scoring_goes_on(trained_project, tmp_path,
                                                                               use_project, stream):
    root, params = _project(trained_project, tmp_path, use_project)
    huge = b"x" * 2_000_000  # the embedded broker accepts it; the worker's producer never could resend it
    ticks = replay(root, params, start="2024-11-01", symbols=["AAPL"])[:40]
    _send(stream, [(b"AAPL", huge)], max_request_size=4 * 1024 * 1024)
    _send(stream, [_tick_record(t) for t in ticks])
    w = WorkerThread(params, stream)
    wait_for(lambda: w.stats.consumed >= 41, what="the worker to get past the big record")
    w.stop()
    (headers, key, value), = _dead_letters(stream)
    assert headers["reason"].startswith("not JSON") and headers["truncated"] == "true"
    assert int(headers["original_size"]) == len(huge) + 4 and value == huge[:messages.DEAD_LETTER_MAX_BYTES]
    assert headers["source_topic"] == stream.topics.prices and headers["source_offset"] == "0"
    assert len(predictions(stream)) == 40 - (params.featurize.window - 1)
    assert w.stats.rewinds == 0 and w.stats.dead_lettered == 1


def test_a_broker_that_stops_answering_mid_batch_rewinds_and_loses_nothing(trained_project, tmp_path, use_project):
    root, params = _project(trained_project, tmp_path, use_project, max_poll_records=200, delivery_timeout_ms=2000)
    broker = brokers.start_scratch_broker("tansu", tmp_path, params.kafka, topics=Topics())  # paused below: its own
    stream, pid = Stream(broker, Topics()), broker.services[0].pid
    try:
        ticks = replay(root, params, start="2015-03-01", symbols=("AAPL", "AMZN", "GOOGL", "META", "MSFT"))
        publish(stream, ticks, serving=params.serving)
        w = WorkerThread(params, stream)
        wait_for(lambda: w.stats.predicted > 2000, every_s=0.02, what="scoring of the backlog")
        os.kill(pid, signal.SIGSTOP)  # mid-batch: its sends time out (transient, not the record's fault)
        wait_for(lambda: w.stats.rewinds >= 1, timeout_s=60, every_s=0.1, what="the worker to notice and rewind")
        os.kill(pid, signal.SIGCONT)
        window = params.featurize.window
        wait_for(lambda: set(positions(predictions(stream))) | warmup_positions(inputs(stream), window)
                 == set(inputs(stream)), timeout_s=180, every_s=2, what="every input to be scored")
        w.stop()
        found, outs = inputs(stream), predictions(stream)
        where = positions(outs)
        print(f"broker paused mid-backlog: {w.stats.rewinds} rewinds, {len(where) - len(set(where))} "
              f"forecasts sent twice, {len(found) - len(set(where)) - len(warmup_positions(found, window))} lost")
        assert w.stats.rewinds >= 1 and w.thread is not None
        assert len(where) - len(set(where)) <= 4 * params.serving.max_poll_records
        assert_forecasts_match(outs, expected_forecasts(found, _forecaster(params)))
    finally:
        os.kill(pid, signal.SIGCONT)
        broker.stop()


def test_ticks_that_break_the_rules_are_dead_lettered_and_never_scored(trained_project, tmp_path, use_project,
                                                                       stream):
    root, params = _project(trained_project, tmp_path, use_project)
    clean = replay(root, params, start="2024-09-01", symbols=["AAPL"])[:56]
    spike = Tick(clean[30].timestamp.replace("16:00", "16:30"), "AAPL", clean[30].price * 1000)
    late = Tick("2024-10-21 16:00:00", "AAPL", clean[-1].price)
    sent = clean[:31] + [spike] + clean[31:50] + [late, clean[49]] + clean[50:]
    _send(stream, [_tick_record(t) for t in sent])
    w = WorkerThread(params, stream)
    wait_for(lambda: w.stats.consumed >= len(sent), what="scoring")
    w.stop()
    reasons = sorted(h["reason"].split(":")[0] for h, _, _ in _dead_letters(stream))
    assert reasons == ["duplicate", "implausible move", "out of order"]
    assert w.stats.dead_letter_reasons == {"jump": 1, "out_of_order": 1, "duplicate": 1}
    found = inputs(stream)
    bad = {where for h, _, _ in _dead_letters(stream) for where in [(int(h["source_partition"]), int(h["source_offset"]))]}
    kept = {where: tick for where, tick in found.items() if where not in bad}
    outs = predictions(stream)
    assert not set(positions(outs)) & bad
    assert_forecasts_match(outs, expected_forecasts(kept, _forecaster(params)))  # windows never saw them
    prices = np.array([t.price for t in clean])
    pred = np.array([o["predicted_price"] for o in sorted(outs, key=lambda o: o["input_offset"])])
    expected_mse = float(np.mean((prices[params.featurize.window:] - pred[:-1]) ** 2))
    assert w.stats.overall.figures()["mse"] == pytest.approx(expected_mse, rel=1e-9)  # live metrics too
    evaluated = score_rows(stream_report.joined_rows(w.worker.rules, False, stream.topics, stream.bootstrap))["_pooled"]
    assert evaluated["n"] == w.stats.overall.n and evaluated["mse"] == pytest.approx(expected_mse, rel=1e-9)


def test_a_lasting_new_price_level_restarts_the_window_after_n_ticks(trained_project, tmp_path, use_project,
                                                                    stream, caplog):
    root, params = _project(trained_project, tmp_path, use_project, level_shift_ticks=5)
    real = replay(root, params, start="2024-06-01", symbols=["MSFT"])[:70]
    split = [Tick(t.timestamp, t.symbol, t.price / 4) for t in real[35:]]  # an unadjusted 4:1 split
    _send(stream, [_tick_record(t) for t in real[:35] + split])
    w = WorkerThread(params, stream)
    wait_for(lambda: w.stats.consumed >= 70, what="scoring")
    w.stop()
    window = params.featurize.window
    assert w.stats.dead_lettered == 4 and w.stats.new_levels == 1
    assert "MSFT: 5 consecutive ticks at a new price level" in caplog.text
    outs = sorted(predictions(stream), key=lambda o: o["input_offset"])
    before, after = [o for o in outs if o["input_offset"] < 35], [o for o in outs if o["input_offset"] >= 39]
    assert len(before) == 35 - (window - 1) and len(after) == 31 - (window - 1)  # warm-up again from tick 39
    assert after[0]["input_offset"] == 39 + window - 1
    f = _forecaster(params)
    level = np.array([t.price for t in split[4:]])
    windows = np.lib.stride_tricks.sliding_window_view(level, window)
    assert np.allclose([o["predicted_price"] for o in after], f.predict_next(windows, ["MSFT"] * len(windows)), rtol=1e-6)
    assert w.stats.overall.n == (len(before) - 1) + (len(after) - 1)  # nothing scored across the break
    evaluated = score_rows(stream_report.joined_rows(w.worker.rules, False, stream.topics, stream.bootstrap))["_pooled"]
    assert evaluated["n"] == w.stats.overall.n


@pytest.mark.parametrize("workers", [1, 2])
def test_unkeyed_and_miskeyed_ticks_are_rekeyed_and_scored_as_keyed_ones(trained_project, tmp_path, use_project,
                                                                         stream, workers):
    root, params = _project(trained_project, tmp_path, use_project)
    ticks = replay(root, params, start="2024-08-01", symbols=["AAPL", "MSFT", "NVDA"])
    by_symbol = {"AAPL": b"", "MSFT": None, "NVDA": b"WRONG"}  # keyed, unkeyed (as the seed sent), mis-keyed
    keys = [by_symbol[t.symbol] for t in ticks]
    running = [WorkerThread(params, stream) for _ in range(workers)]
    wait_for(lambda: sum(len(w.owned()) for w in running) == 4, what="the group to form")
    # a live feed's pace: at 100/s, in a CI run loading both cores, two workers held enough re-keyed
    # ticks in flight at once that 19 of 348 (5.5 %) interleaved
    _send(stream, [_tick_record(t, k) for t, k in zip(ticks, keys)], rate=50)
    rekeyed = sum(k != b"" for k in keys)
    wait_for(lambda: sum(w.stats.predicted + w.stats.warmup + w.stats.dead_lettered for w in running) >= len(ticks),
             what="scoring")
    for w in running:
        w.stop()
    assert sum(w.stats.rekeyed for w in running) == rekeyed
    letters = _dead_letters(stream)
    dead = {(int(h["source_partition"]), int(h["source_offset"])): h["reason"] for h, _, _ in letters}
    assert all(reason.startswith("out of order") for reason in dead.values()), dead
    if workers == 1:
        assert not dead  # one worker re-keys in time order
    else:  # two workers re-key independently: some ticks can interleave; late ones are dead letters
        print(f"unkeyed feed, two workers: {len(dead)} of {len(ticks)} ticks re-keyed out of order")
        # how many interleave depends on the machine's load (CI runs saw 2, 19 and 20 of 348): bound only
        # what ordering guarantees, i.e. only re-keyed symbols, and far from the half a lost order gives
        late = {messages.parse_tick(value).symbol for _, _, value in letters}
        assert late <= {s for s, k in by_symbol.items() if k != b""}, late
        assert len(dead) <= rekeyed // 4
    keyed_positions = _keyed_positions(stream)  # once: it reads the whole topic
    keyed = {where: t for where, t in inputs(stream).items() if not isinstance(t, str)
             and where in keyed_positions and where not in dead}
    outs = predictions(stream)
    assert len(positions(outs)) == len(set(positions(outs))) == len(ticks) - len(dead) - 3 * (params.featurize.window - 1)
    assert set(positions(outs)) <= set(keyed)
    assert_forecasts_match(outs, expected_forecasts(keyed, _forecaster(params)))


def _keyed_positions(stream):
    return {(r.partition, r.offset) for r in read_topic(stream, stream.topics.prices)
            if not isinstance(t := messages.parse_tick(r.value), str) and r.key == t.symbol.encode()}
