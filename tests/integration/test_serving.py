"""The serving worker on a real embedded broker, a real MLflow store and a real tiny model."""

import dataclasses
import signal
from collections import defaultdict

import mlflow
import numpy as np
import pytest
import yaml

from neuropredict import backtests, intervals, messages, producer, promotions, registry, stream_report, tracking
from neuropredict.evaluation import score_rows
from neuropredict.features import load_price_series
from neuropredict.forecaster import served_period
from neuropredict.settings import contracts
from neuropredict.settings.contracts import Topics
from neuropredict.settings.schema import load_params
from tests.conftest import Stream, copy_project, load_json, project_env, write_params
from tests.integration.kafka_helpers import (
    WorkerThread,
    dead_letters,
    positions,
    predictions,
    promote_mid_stream,
    publish,
    replay,
    signal_mid_stream,
    wait_for,
)
from tests.integration.kafka_helpers import inputs as _inputs
from tests.integration.kafka_helpers import warmup_positions as _warmup_positions

pytestmark = pytest.mark.slow


def _ticks(root, params, start="2024-07-01", symbols=None):
    return replay(root, params, start, symbols)


@pytest.fixture
def served(trained_project, use_project):
    use_project(trained_project)
    return trained_project, load_params(trained_project / "params.yaml")


def test_every_input_is_predicted_dead_lettered_or_warmup_and_counts_add_up(served, any_stream):
    root, params, stream = *served, any_stream
    ticks = _ticks(root, params)
    sent = publish(stream, ticks, serving=params.serving, malformed=9)
    total = sent["ticks"] + sent["malformed"]
    w = WorkerThread(params, stream)
    wait_for(lambda: w.stats.consumed >= total, what="the worker to consume everything")
    w.stop()
    # exactly-once where the broker isolates transactions; the embedded one does not
    assert w.worker.guarantee == {"apache": "exactly_once", "tansu": "at_least_once"}[stream.kind]

    inputs = _inputs(stream)
    outs = predictions(stream)
    dlq = dead_letters(stream)
    assert len(inputs) == total
    assert w.stats.consumed == total
    assert w.stats.predicted + w.stats.dead_lettered + w.stats.warmup == total
    assert len(outs) == w.stats.predicted and len(dlq) == w.stats.dead_lettered == 9

    predicted_at = {(o["input_partition"], o["input_offset"]) for o in outs}
    dead_at = {(int(messages.header_dict(r.headers)["source_partition"]),
                int(messages.header_dict(r.headers)["source_offset"])) for r in dlq}
    warm_at = _warmup_positions(inputs, params.featurize.window)
    assert len(predicted_at) == len(outs)  # nothing scored twice
    assert predicted_at | dead_at | warm_at == set(inputs)
    assert not (predicted_at & dead_at) and not (predicted_at & warm_at) and not (dead_at & warm_at)
    assert len(warm_at) == w.stats.warmup

    for r in dlq:  # the original bytes, untouched, and a reason
        h = messages.header_dict(r.headers)
        assert h["reason"] and h["source_topic"] == stream.topics.prices
        assert isinstance(inputs[(int(h["source_partition"]), int(h["source_offset"]))], str)
    assert {r.value for r in dlq} <= {v for _, v in producer._malformed_examples(9)}
    for o in outs:
        assert set(o) >= {"timestamp", "symbol", "actual_price", "predicted_price", "model_version"}
        assert o["model_version"] == registry.alias_version(params.register.model_name)


def test_live_mse_in_mlflow_equals_the_mse_computed_from_the_output_topic(served, stream):
    root, params = served
    publish(stream, _ticks(root, params), serving=params.serving)
    w = WorkerThread(params, stream)
    wait_for(lambda: w.stats.predicted > 0 and w.stats.consumed >= len(_ticks(root, params)), what="scoring")
    w.stop()

    by_symbol = defaultdict(list)
    for o in predictions(stream):
        by_symbol[o["symbol"]].append(o)
    model_sq, naive_sq, n = 0.0, 0.0, 0
    for rows in by_symbol.values():
        rows.sort(key=lambda o: o["input_offset"])
        pred = np.array([o["predicted_price"] for o in rows[:-1]])
        prev = np.array([o["actual_price"] for o in rows[:-1]])
        nxt = np.array([o["actual_price"] for o in rows[1:]])
        model_sq += float(np.sum((nxt - pred) ** 2))
        naive_sq += float(np.sum((nxt - prev) ** 2))
        n += len(nxt)

    run = mlflow.get_run(w.worker.reporter.run_id)
    assert run.data.tags["model_version"] == w.worker.version
    assert run.info.status == "FINISHED"
    assert run.data.metrics["live_scored"] == n
    assert run.data.metrics["live_mse"] == pytest.approx(model_sq / n, rel=1e-9)
    assert run.data.metrics["live_naive_mse"] == pytest.approx(naive_sq / n, rel=1e-9)
    assert run.data.metrics["live_skill"] == pytest.approx(1 - model_sq / naive_sq, rel=1e-6)
    assert run.data.metrics["consumed"] == w.stats.consumed

    # `neuropredict evaluate` joins with stock_prices: the same figures as computed here from the topic
    joined = stream_report.joined_rows(w.worker.rules, False, stream.topics, stream.bootstrap)
    evaluated = score_rows(joined)["_pooled"]
    assert evaluated["n"] == n
    assert evaluated["mse"] == pytest.approx(model_sq / n, rel=1e-12)
    assert evaluated["persistence_mse"] == pytest.approx(naive_sq / n, rel=1e-12)

    # the intervals served (online-calibrated), live beside the static one's, EWMA's and GARCH's on the
    # same ticks, are those of the offline test period
    series = load_price_series(root / "data/raw", params.data.symbols, "1d", "Close")
    served_rows = served_period(registry.load(params.register.model_name).forecaster, series, "2024-07-01",
                                params.data.end)
    offline = intervals.score(served_rows, (0.8, 0.95))
    streamed = stream_report.interval_scores(joined)
    assert offline["_pooled"]["interval_score_80"] != offline["_pooled"]["conformal_interval_score_80"]  # adaptive
    for key in ("coverage_80", "coverage_95", "interval_score_80", "conformal_coverage_80", "ewma_coverage_80",
                "ewma_interval_score_95", "garch_coverage_95", "garch_interval_score_80"):
        assert run.data.metrics[f"live_{key}"] == pytest.approx(offline["_pooled"][key], rel=1e-6), key
        assert run.data.metrics[f"live_{key}_MSFT"] == pytest.approx(offline["MSFT"][key], rel=1e-6), key
    assert streamed["_pooled"]["coverage_95"] == run.data.metrics["live_coverage_95"]
    assert streamed["_pooled"]["interval_score_80"] == pytest.approx(run.data.metrics["live_interval_score_80"])
    # evaluate's coverage by volatility regime and its backtests: the offline ones of the same rows
    live, expected = stream_report.conditional_coverage(joined)["model"], backtests.conditional(served_rows, (0.8, 0.95))
    for tag in ("80", "95"):
        for key in ("coverage", "coverage_high_volatility", "coverage_after_jumps", "kupiec_p", "christoffersen_p"):
            assert live[tag][key] == pytest.approx(expected["model"][tag][key], rel=1e-9), (tag, key)


def test_hot_swap_mid_stream_scores_everything_once_and_switches_versions_at_one_point(
        trained_project, tmp_path, use_project, any_stream):
    root, stream = copy_project(trained_project, tmp_path / "copy"), any_stream
    use_project(root)
    params = load_params(root / "params.yaml")
    name = params.register.model_name
    first = registry.alias_version(name)
    second = _register_another_version(root, params)
    assert registry.alias_version(name) == first  # registering alone does not move production

    ticks = _ticks(root, params, start="2022-06-01")
    w = promote_mid_stream(params, stream, ticks, second, rate=250, after=200)

    outs = predictions(stream)
    where = [(o["input_partition"], o["input_offset"]) for o in outs]
    assert len(where) == len(set(where)) == len(ticks) - len(_warmup_positions(_inputs(stream), params.featurize.window))
    assert w.stats.swaps == 1
    for partition in {p for p, _ in where}:
        versions = [o["model_version"] for o in sorted(outs, key=lambda o: o["input_offset"])
                    if o["input_partition"] == partition]
        switches = sum(a != b for a, b in zip(versions, versions[1:]))
        assert versions[0] == first and versions[-1] == second and switches == 1, versions


def _register_another_version(root, params) -> str:
    """A second real version: the other cell type's tuned model, registered as challenger."""
    winner = load_json(root / "models/tuned/best/selection.json")["cell"]
    other = "gru" if winner == "lstm" else "lstm"
    series = load_price_series(root / "data/raw", params.data.symbols, "1d", "Close")
    tracking.setup()
    with mlflow.start_run(run_name="test-second-version"):
        version = registry.log_and_register(root / "models" / "tuned" / other, params.register.model_name,
                                            series, {"cell": other}, {"window": params.featurize.window})
    promotions.move(params.register.model_name, contracts.CHALLENGER_ALIAS, version, "gate", "a test registers it")
    return version


def test_a_killed_worker_is_replaced_and_no_input_is_left_unscored(trained_project, tmp_path, stream):
    """At-least-once, on the embedded broker. On Apache Kafka the same kill, mid-transaction, is
    test_apache_kafka.py's fencing test, which asserts this and more (no forecast seen twice)."""
    root = copy_project(trained_project, tmp_path / "copy")
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["serving"]["max_poll_records"] = 40  # many small batches, so the kill lands mid-stream
    write_params(root, raw)
    params = load_params(root / "params.yaml")
    ticks = _ticks(root, params, start="2022-06-01")
    partial, second = signal_mid_stream(root, project_env(root), stream, ticks, params.serving, signal.SIGKILL,
                                        tmp_path / "first.log", params.featurize.window)
    inputs = _inputs(stream)
    assert len(inputs) == len(ticks) and partial < len(ticks) - 2 * params.featurize.window
    where = positions(predictions(stream))
    warm = _warmup_positions(inputs, params.featurize.window)
    assert set(where) | warm == set(inputs)  # nothing lost (at-least-once may re-score a batch)
    assert "rebuilt" in second.stderr and " 0 warm-up" in second.stderr  # windows came back from Kafka


def test_two_workers_in_one_group_split_the_partitions_and_score_each_tick_once(served, any_stream):
    root, params, stream = *served, any_stream
    every_symbol = ("AAPL", "AMZN", "GOOGL", "META", "MSFT", "NVDA", "TSLA")  # spread over 4 partitions
    ticks = _ticks(root, params, start="2024-01-01", symbols=every_symbol)
    a = WorkerThread(params, stream)
    b = WorkerThread(params, stream)
    wait_for(lambda: a.owned() and b.owned() and len(a.owned()) + len(b.owned()) == 4,
             what="both workers to own partitions")
    publish(stream, ticks, serving=params.serving)
    wait_for(lambda: a.stats.consumed + b.stats.consumed >= len(ticks), what="the two workers to finish")
    parts_a, parts_b = a.owned(), b.owned()
    a.stop()
    b.stop()
    assert parts_a and parts_b and not parts_a & parts_b
    outs = predictions(stream)
    where = [(o["input_partition"], o["input_offset"]) for o in outs]
    assert len(where) == len(set(where))
    assert a.stats.consumed + b.stats.consumed == len(ticks)
    by_worker = defaultdict(set)
    for o in outs:
        by_worker[o["worker"]].add(o["input_partition"])
    assert by_worker[a.worker.worker_id] <= parts_a and by_worker[b.worker.worker_id] <= parts_b
    fed = {p for p, _ in _inputs(stream)}
    assert by_worker[a.worker.worker_id] == parts_a & fed and by_worker[b.worker.worker_id] == parts_b & fed


def test_worker_survives_a_broker_restart_and_scores_what_comes_after(served, tmp_path):
    from neuropredict import brokers, procs

    root, params = served
    port = procs.free_port()
    broker = brokers.start_tansu(port, tmp_path / "k1.log")
    stream = Stream(brokers.ScratchBroker("tansu", broker.url, [broker], 1), Topics())
    stream.broker.create(params.kafka, stream.topics)
    ticks = _ticks(root, params)
    w = WorkerThread(params, stream)
    try:
        publish(stream, ticks, serving=params.serving)
        wait_for(lambda: w.stats.consumed >= len(ticks), what="scoring before the outage")
        procs.stop([broker.pid])  # the embedded broker keeps nothing: a restart is a new cluster
        broker = brokers.start_tansu(port, tmp_path / "k2.log")
        stream.broker.create(params.kafka, stream.topics)
        before = w.stats.predicted
        publish(stream, ticks, serving=params.serving)
        wait_for(lambda: w.stats.consumed >= 2 * len(ticks), timeout_s=120, what="scoring after the restart")
        assert w.thread.is_alive()
        assert w.stats.predicted - before == len(ticks) - 2 * (params.featurize.window - 1)
    finally:
        w.stop()
        procs.stop([broker.pid])


def test_worker_keeps_scoring_while_mlflow_is_unreachable(served, stream, monkeypatch, caplog):
    from neuropredict import procs

    root, params = served
    w = WorkerThread(params, stream)
    dead = f"http://127.0.0.1:{procs.free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)  # registry and tracking both go away
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    ticks = _ticks(root, params)
    publish(stream, ticks, serving=params.serving)
    wait_for(lambda: w.stats.consumed >= len(ticks), what="scoring during the outage")
    assert w.thread.is_alive() and w.stats.predicted == len(ticks) - 2 * (params.featurize.window - 1)
    wait_for(lambda: "cannot check stock-price-forecaster@production" in caplog.text, what="a clear log line")
    w.stop()


def test_sub_daily_ticks_to_a_daily_model_are_scored_but_counted_and_reported(served, stream, caplog):
    root, params = served
    ticks = _ticks(root, params)[:60]
    # the seed's mistake: several ticks a day (at distinct times: a repeated timestamp is a dead letter)
    doubled = [t for tick in ticks for t in (dataclasses.replace(tick, timestamp=tick.timestamp[:10] + " 10:00:00"), tick)]
    publish(stream, doubled, serving=params.serving)
    w = WorkerThread(params, stream)
    wait_for(lambda: w.stats.consumed >= len(doubled), what="scoring")
    w.stop()
    assert w.stats.cadence_mismatches == len(ticks)
    assert "forecasts daily closes" in caplog.text
