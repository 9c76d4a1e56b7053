"""Promotion on live evidence, on real brokers, a real registry and real workers: shadow scoring of
the challenger, `compare`, a `promote` that checks the evidence, the rollback guard, alias history."""

import logging
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import numpy as np
import pytest

from neuropredict import compare, messages, promote, promotions, registry, tracking
from neuropredict.errors import NeuropredictError
from neuropredict.features import load_price_series
from neuropredict.forecaster import Forecaster, forecast_period
from neuropredict.guard import RollbackGuard
from neuropredict.settings.contracts import CHALLENGER_ALIAS, PRODUCTION_ALIAS, TOPIC_PREFIX_ENV
from neuropredict.settings.paths import Paths
from neuropredict.settings.schema import load_params
from tests.conftest import copy_with_params, project_env
from tests.integration.kafka_helpers import (
    Sender,
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
    root, params = copy_with_params(trained_project, tmp_path / "copy", {
        "serving": serving, "promote": {"max_dm_t": 2.0, "min_ticks": 100},
        "guard": {"window_ticks": 60, "max_dm_t": 3.0, "min_coverage_p": 0.0001, "check_interval_s": 0.5}})
    use_project(root)
    return root, params


def _register_shifted(root: Path, shift: float) -> str:
    """The tuned model with its output shifted by `shift` (in its scaled next-return units),
    registered as a real version by the register stage's own function, in this process."""
    best = root / "models" / "tuned" / "best"
    f = Forecaster.load(best)
    dense = f.model.get_layer("next_return")
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel, bias + np.float32(shift)])
    f.save(best)
    params = load_params(root / "params.yaml")
    with tracking.stage_run("register", params.register, root=root):  # what pipelines/register.py runs
        return registry.register_tuned(params, Paths(root))["version"]


def _cli(root, stream, *args):
    env = {**project_env(root), "KAFKA_BOOTSTRAP_SERVERS": stream.bootstrap, TOPIC_PREFIX_ENV: stream.topics.prefix}
    return subprocess.run([sys.executable, "-m", "neuropredict.cli", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)


def _shadow_loaded(workers, version: str) -> bool:
    return all(w.worker.shadows.served().get(CHALLENGER_ALIAS) == version for w in workers)


def test_a_bad_version_is_shown_worse_refused_forced_and_rolled_back_by_the_guard(
        trained_project, tmp_path, use_project, apache_stream):
    root, params = _project(trained_project, tmp_path, use_project)
    stream, name = apache_stream, params.register.model_name
    good = registry.alias_version(name)
    bad = _register_shifted(root, 3.0)  # three standard deviations of a day's return, every day
    assert registry.alias_version(name, CHALLENGER_ALIAS) == bad and registry.alias_version(name) == good
    ticks = replay(root, params, start="2022-06-01")
    half = len(ticks) // 2

    workers = [WorkerThread(params, stream), WorkerThread(params, stream)]
    wait_for(lambda: sum(len(w.owned()) for w in workers) == 4 and _shadow_loaded(workers, bad),
             what="both workers to own partitions, with the challenger loaded in shadow")
    publish(stream, ticks[:half], serving=params.serving)
    wait_for(lambda: sum(w.stats.consumed for w in workers) >= half, what="the first half")
    assert all(w.worker.guarantee == "exactly_once" for w in workers)

    # shadow scoring shows it worse, on the same ticks; production's topic holds none of its forecasts
    result, _ = compare.compare(compare.live_rows(params, stream.topics, stream.bootstrap), good, bad)
    pooled = result["paired"]["_pooled"]
    assert pooled["n"] >= params.promote.min_ticks and pooled["dm_t"] > params.promote.max_dm_t
    assert {o["model_version"] for o in predictions(stream)} == {good}

    shown = []
    with pytest.raises(NeuropredictError, match=r"refusing to promote version \d+: it fails the registration gate "
                                                r".*; it is significantly worse than production v\d+ on \d+ live ticks"):
        promote.promote(params, Paths(root), stream.topics, bad, bootstrap=stream.bootstrap, show=shown.append)
    assert registry.alias_version(name) == good
    assert any("registration gate: FAILS" in line for line in shown) and any("DM t B-A" in line for line in shown)

    forced = promote.promote(params, Paths(root), stream.topics, bad, force=True, bootstrap=stream.bootstrap,
                             show=shown.append)
    assert (forced.kind, forced.from_version, forced.to_version) == ("force", good, bad)
    forced_at = time.monotonic()
    wait_for(lambda: all(w.worker.version == bad for w in workers), what="both workers to swap to the bad version")

    stop = threading.Event()
    guard = threading.Thread(target=RollbackGuard(params, stream.topics, stream.bootstrap).run, args=(stop,),
                             daemon=True)
    guard.start()
    sender = Sender(ticks[half:], stream, rate=100, serving=params.serving)
    sender.start()
    try:
        wait_for(lambda: registry.alias_version(name) == good, timeout_s=120, what="the guard to roll back")
        rolled_back_s = time.monotonic() - forced_at
        sender.join()
        wait_for(lambda: sum(w.stats.consumed for w in workers) >= len(ticks), what="the whole stream")
        wait_for(lambda: all(w.worker.version == good for w in workers), what="both workers to swap back")
    finally:
        stop.set()
        guard.join(30)
        for w in workers:
            w.stop()
    assert [w.stats.swaps for w in workers] == [2, 2]

    # exactly-once: every input forecast once, by one version or the other; nothing lost
    outs, where = predictions(stream), positions(predictions(stream))
    assert len(where) == len(set(where))
    got = set(where) | warmup_positions(inputs(stream), params.featurize.window)
    assert len(dead_letters(stream)) == 0 and got == set(inputs(stream))
    published_bad = sum(o["model_version"] == bad for o in outs)
    assert published_bad >= params.guard.window_ticks
    print(f"\nrollback {rolled_back_s:.1f} s after promote --force; v{bad} published {published_bad} forecasts")

    moves = promotions.history(name, PRODUCTION_ALIAS)
    assert [(m.kind, m.from_version, m.to_version) for m in moves[-2:]] == [("force", good, bad), ("guard", bad, good)]
    assert "fails the registration gate" in moves[-2].reason and moves[-2].actor != "guard"
    assert "worse than persistence" in moves[-1].reason and moves[-1].actor == "guard"
    assert moves[-1].evidence["live_dm_t"] > params.guard.max_dm_t
    challenger = promotions.history(name, CHALLENGER_ALIAS)[-1]
    assert (challenger.kind, challenger.to_version) == ("gate", bad)
    shown = _cli(root, stream, "history").stdout.splitlines()
    assert sum(" force " in line for line in shown) == 1 and sum(" guard " in line for line in shown) == 1
    assert any("registered by the pipeline" in line for line in shown)
    tags = registry.version_tags(name, good)
    assert (tags["production_moved_by"], tags["production_move_kind"]) == ("guard", "guard")
    assert "production_until" in registry.version_tags(name, bad)


def test_a_good_challenger_compare_equals_the_workers_figures_and_promote_accepts_it(
        trained_project, tmp_path, use_project, stream, caplog):
    """Beside it, a shadow whose version cannot load: production's forecasts stay unchanged and complete."""
    root, params = _project(trained_project, tmp_path, use_project, shadow_aliases=[CHALLENGER_ALIAS, "broken"])
    name = params.register.model_name
    good = registry.alias_version(name)
    ticks = replay(root, params, start="2022-06-01")
    # a slightly better-centred version: its output moved against production's mean error
    series = load_price_series(root / "data/raw", params.data.symbols, "1d", "Close")
    rows = forecast_period(registry.load(name).forecaster, series, "2022-06-01", params.data.end)
    candidate = _register_shifted(root, 0.05 * np.sign(np.mean(rows["actual"] - rows["predicted"])))
    assert registry.alias_version(name, CHALLENGER_ALIAS) == candidate
    broken = _register_broken(root, params, series)
    caplog.set_level(logging.ERROR, logger="neuropredict.stream.watcher")

    w = WorkerThread(params, stream)
    wait_for(lambda: w.owned() and _shadow_loaded([w], candidate), what="the worker, with the challenger in shadow")
    publish(stream, ticks, serving=params.serving)
    wait_for(lambda: w.stats.consumed >= len(ticks), what="the whole stream")
    w.stop()

    outs, got = predictions(stream), inputs(stream)  # production: complete, and what it forecasts alone
    assert len(outs) == len(got) - len(warmup_positions(got, params.featurize.window)) == w.stats.predicted
    assert_forecasts_match(outs, expected_forecasts(got, registry.load(name, version=good).forecaster))
    assert any(f"broken: version {broken} cannot be loaded" in r.getMessage() for r in caplog.records)
    assert {messages.decode(r.value)["alias"] for r in read_topic(stream, stream.topics.shadow_predictions)} == {
        CHALLENGER_ALIAS}

    result, _ = compare.compare(compare.live_rows(params, stream.topics, stream.bootstrap), good, candidate)
    assert result["paired"]["_pooled"]["n"] == w.stats.by_alias[(CHALLENGER_ALIAS, candidate)].n
    metrics = mlflow.get_run(w.worker.reporter.run_id).data
    assert metrics.tags[f"alias_{CHALLENGER_ALIAS}"] == candidate
    for alias, version in ((PRODUCTION_ALIAS, good), (CHALLENGER_ALIAS, candidate)):
        live, recomputed = w.stats.by_alias[(alias, version)].figures(), result["versions"][version]
        assert recomputed["n"] == live["scored"]
        for mine, theirs in (("mse", "mse"), ("persistence_mse", "naive_mse"), ("skill", "skill"), ("dm_t", "dm_t"),
                             ("coverage_80", "coverage_80"), ("coverage_95", "coverage_95"),
                             ("interval_score_80", "interval_score_80")):
            assert recomputed[mine] == pytest.approx(live[theirs], rel=1e-9), (alias, mine)
            assert metrics.metrics[f"{alias}_v{version}_{theirs}"] == pytest.approx(live[theirs], rel=1e-9)

    shown = _cli(root, stream, "compare")  # production against challenger, with a chart in an MLflow run
    assert shown.returncode == 0, shown.stderr
    assert f"v{good} (A) against v{candidate} (B)" in shown.stdout and "ALL" in shown.stdout
    assert (root / "reports/compare/compare.png").stat().st_size > 10_000
    runs = mlflow.search_runs(experiment_names=["neuropredict-serving"],
                              filter_string="tags.`neuropredict.stage` = 'compare'")
    assert len(runs) == 1

    lines = []
    move = promote.promote(params, Paths(root), stream.topics, candidate, bootstrap=stream.bootstrap, show=lines.append)
    assert (move.kind, move.to_version) == ("promote", candidate) and registry.alias_version(name) == candidate
    assert any("registration gate: passes" in line for line in lines)
    back = promote.rollback(params)
    assert (back.kind, back.from_version, back.to_version) == ("rollback", candidate, good)


def _register_broken(root: Path, params, series) -> str:
    """A real version whose files then vanish from the artifact store, behind the alias `broken`."""
    name = params.register.model_name
    tracking.setup()
    with mlflow.start_run(run_name="test-broken-version"):
        version = registry.log_and_register(root / "models" / "tuned" / "best", name, series, {"cell": "lstm"},
                                            {"window": params.featurize.window})
    logged = tracking.client().get_logged_model(registry.model_id(name, version))
    location = Path(urlparse(logged.artifact_location).path)
    shutil.rmtree(location)
    tracking.client().set_registered_model_alias(name, "broken", version)
    return version
