"""Failure modes of the serving worker, each on real parts: a broker, MLflow stores, real models.

What every test counts from the topics themselves: inputs lost (neither forecast, dead-lettered
nor warm-up), inputs scored twice (by input partition/offset), and forecasts that differ from
the same model run offline on the same windows.
"""

import dataclasses
import logging
import signal
import sqlite3
import threading

import mlflow
import pytest

from neuropredict import promotions, registry, stream_report
from neuropredict.features import load_price_series
from neuropredict.settings import contracts
from neuropredict.settings.contracts import PRODUCTION_ALIAS
from tests.conftest import copy_with_params, project_env
from tests.integration.kafka_helpers import (
    Sender,
    WorkerThread,
    assert_bounds_match,
    assert_forecasts_match,
    committed_offsets,
    end_offsets,
    expected_bounds,
    expected_forecasts,
    inputs,
    positions,
    predictions,
    promote_mid_stream,
    replay,
    signal_mid_stream,
    wait_for,
    warmup_positions,
)
from tests.integration.test_serving import _register_another_version

pytestmark = pytest.mark.slow

EVERY_SYMBOL = ("AAPL", "AMZN", "GOOGL", "META", "MSFT", "NVDA", "TSLA")  # spread over 4 partitions


def _project(trained_project, tmp_path, **serving):
    """A copy of the trained project with serving overrides; its params."""
    return copy_with_params(trained_project, tmp_path / "copy", {"serving": serving})


def _production(params):
    return registry.load(params.register.model_name).forecaster


def _covered(stream, window):
    """Every input forecast or warm-up (nothing lost)?"""
    found = inputs(stream)
    return set(positions(predictions(stream))) | warmup_positions(found, window) == set(found)


def test_sigterm_mid_stream_then_a_restart_scores_every_input_exactly_once(trained_project, tmp_path, stream,
                                                                              use_project):
    root, params = _project(trained_project, tmp_path, max_poll_records=40)  # many batches
    use_project(root)
    ticks = replay(root, params, start="2022-06-01")
    log_path = tmp_path / "first.log"
    stopped_at, second = signal_mid_stream(root, project_env(root), stream, ticks, params.serving, signal.SIGTERM,
                                           log_path, params.featurize.window)
    assert "SIGTERM: finishing the current batch" in log_path.read_text()
    found, outs = inputs(stream), predictions(stream)
    where = positions(outs)
    assert len(found) == len(ticks) and stopped_at < len(ticks) - 2 * params.featurize.window
    assert len(where) == len(set(where)), f"{len(where) - len(set(where))} inputs scored twice"
    assert set(where) | warmup_positions(found, params.featurize.window) == set(found), "inputs lost"
    committed, ends = committed_offsets(stream), end_offsets(found)
    assert {p: committed.get(p, 0) for p in range(4)} == {p: ends.get(p, 0) for p in range(4)}  # all drained
    assert " 0 warm-up" in second.stderr  # the restart rebuilt its windows from Kafka ...
    assert_forecasts_match(outs, expected_forecasts(found, _production(params)))  # ... correctly
    # and went on with each symbol's online interval quantiles from the state topic
    assert_bounds_match(outs, expected_bounds(found, _production(params)))


def test_a_worker_joining_and_another_leaving_under_load_lose_nothing(trained_project, tmp_path, stream,
                                                                      use_project):
    root, params = _project(trained_project, tmp_path, max_poll_records=100)
    use_project(root)
    ticks = replay(root, params, start="2022-01-01", symbols=EVERY_SYMBOL)  # ~18 s at 300 ticks/s: room for a slow join
    sender = Sender(ticks, stream, rate=300, serving=params.serving)
    a = WorkerThread(params, stream)
    wait_for(lambda: a.owned(), what="the first worker to join")
    sender.start()
    wait_for(lambda: a.stats.predicted > 300, what="the first worker to score")
    b = WorkerThread(params, stream)  # joins while data flows: a rebalance under load
    wait_for(lambda: b.owned() and b.stats.predicted > 100, what="the second worker to score")
    assert sender.is_alive(), "the stream ended before the rebalance: make it longer"
    a.stop()  # leaves: its partitions move to b
    sender.join()
    window = params.featurize.window
    wait_for(lambda: _covered(stream, window), timeout_s=120, what="every input to be scored")
    b.stop()

    found, outs = inputs(stream), predictions(stream)
    where = positions(outs)
    duplicates = len(where) - len(set(where))
    print(f"join+leave under load: {len(found)} inputs, {len(set(where))} scored, {duplicates} redelivered")
    assert set(where) | warmup_positions(found, window) == set(found)
    assert not set(where) & warmup_positions(found, window)  # a handed-over partition needs no new warm-up
    assert duplicates <= 2 * params.serving.max_poll_records  # at most a batch per rebalance
    assert a.stats.predicted > 0 and b.stats.predicted > 0
    assert_forecasts_match(outs, expected_forecasts(found, _production(params)))


def test_a_promotion_hot_swaps_both_workers_of_a_group(trained_project, tmp_path, stream, use_project):
    root, params = _project(trained_project, tmp_path)
    use_project(root)
    name = params.register.model_name
    first, second = registry.alias_version(name), _register_another_version(root, params)
    ticks = replay(root, params, start="2023-01-01", symbols=EVERY_SYMBOL)
    workers = [WorkerThread(params, stream), WorkerThread(params, stream)]
    wait_for(lambda: all(w.owned() for w in workers) and sum(len(w.owned()) for w in workers) == 4,
             what="both to own partitions")
    sender = Sender(ticks, stream, rate=400, serving=params.serving)
    sender.start()
    wait_for(lambda: all(w.stats.predicted > 100 for w in workers), what="both workers to score")
    promotions.move(name, PRODUCTION_ALIAS, second, "force", "a test promotes mid-stream")
    sender.join()
    wait_for(lambda: sum(w.stats.consumed for w in workers) >= len(ticks), what="the whole stream")
    for w in workers:
        w.stop()
    assert [w.stats.swaps for w in workers] == [1, 1]
    outs = predictions(stream)
    where = positions(outs)
    assert len(where) == len(set(where))
    for partition in {p for p, _ in where}:
        versions = [o["model_version"] for o in sorted(outs, key=lambda o: o["input_offset"])
                    if o["input_partition"] == partition]
        assert versions[0] == first and versions[-1] == second
        assert sum(x != y for x, y in zip(versions, versions[1:])) == 1


def _register_longer_window(root, params, window: int) -> str:
    """A real version whose window is longer: the production model's scaler, an untrained net."""
    from neuropredict import hypermodel, tracking
    from neuropredict.forecaster import Forecaster

    scaler = _production(params).scaler
    model = hypermodel.build_model("gru", window - 1, units=4, layers=1, dropout=0.0, learning_rate=1e-3)
    folder = root / "models" / f"window-{window}"
    Forecaster(model, dataclasses.replace(scaler, window=window)).save(folder)
    series = load_price_series(root / "data/raw", params.data.symbols, "1d", "Close")
    tracking.setup()
    with mlflow.start_run(run_name=f"test-window-{window}"):
        return registry.log_and_register(folder, params.register.model_name, series, {"cell": "gru"},
                                         {"window": window})


def test_a_hot_swap_to_a_longer_window_reads_history_back_and_needs_no_warmup(trained_project, tmp_path, stream,
                                                                                use_project):
    root, params = _project(trained_project, tmp_path)
    use_project(root)
    name = params.register.model_name
    longer = params.featurize.window + 6
    first = registry.load(name).forecaster
    version = _register_longer_window(root, params, longer)
    w = promote_mid_stream(params, stream, replay(root, params, start="2022-06-01"), version, rate=200)
    assert w.stats.swaps == 1
    found, outs = inputs(stream), predictions(stream)
    after = [o for o in outs if o["model_version"] == version]
    assert after, "nothing was scored by the new version"
    assert set(positions(outs)) | warmup_positions(found, params.featurize.window) == set(found)  # no gap
    new = registry.load(name, version=version).forecaster
    assert_forecasts_match(after, expected_forecasts(found, new, longer))
    assert_forecasts_match([o for o in outs if o["model_version"] != version], expected_forecasts(found, first))


# The tracking server killed mid-stream (on PostgreSQL, three workers): tests/integration/test_team_path.py


def test_a_locked_sqlite_store_is_retried_by_two_workers_and_evaluate(trained_project, tmp_path, stream,
                                                                       use_project, caplog):
    root, params = _project(trained_project, tmp_path, metrics_interval_s=0.2)
    use_project(root)
    ticks = replay(root, params, start="2023-06-01", symbols=EVERY_SYMBOL)
    caplog.set_level(logging.INFO, logger="neuropredict")
    workers = [WorkerThread(params, stream), WorkerThread(params, stream)]
    Sender(ticks, stream, rate=0, serving=params.serving).run()
    wait_for(lambda: sum(w.stats.consumed for w in workers) >= len(ticks), what="scoring")
    wait_for(lambda: all(w.worker.reporter.run_id for w in workers), what="both runs")
    rows = stream_report.joined_rows(workers[0].worker.rules, False, stream.topics, stream.bootstrap)

    db = sqlite3.connect(root / "mlruns" / "mlflow.db", timeout=30)
    db.execute("BEGIN EXCLUSIVE")  # another writer holds the store: every MLflow write now waits
    evaluated = {}
    evaluate = threading.Thread(target=lambda: evaluated.update(
        stream_report.report(rows, tmp_path / "evaluate", log_to_mlflow=True)))
    evaluate.start()
    # MLflow's own SQLite busy_timeout is 20 s: held past it, writers see `database is locked` and retry
    wait_for(lambda: "MLflow store busy" in caplog.text, timeout_s=90, every_s=0.5, what="a writer to retry")
    db.rollback()
    db.close()
    evaluate.join(120)
    for w in workers:
        w.stop()
    assert "MLflow store busy" in caplog.text or "database is locked" in caplog.text
    client = mlflow.tracking.MlflowClient()
    for w in workers:
        run = client.get_run(w.worker.reporter.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.metrics["consumed"] == w.stats.consumed  # the last snapshot arrived
    runs = mlflow.search_runs(experiment_names=[contracts.SERVING_EXPERIMENT_NAME], output_format="list",
                              filter_string="tags.`neuropredict.stage` = 'evaluate'")
    assert len(runs) == 1 and runs[0].data.metrics["stream_mse"] == pytest.approx(evaluated["scores"]["_pooled"]["mse"])
