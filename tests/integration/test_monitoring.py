"""The workers' Prometheus endpoint and the alert rules: the endpoint of a real worker says what the
worker itself counts, and promtool (Debian's, as `.ci/run` installs it) checks the configuration
and runs every rule's test. A real Prometheus scraping real workers, one SIGKILLed, is in
test_team_path.py (compose's topology as processes, with `up --monitoring`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from neuropredict import intervals, monitoring, procs
from neuropredict.stream import metrics
from neuropredict.settings.contracts import PRODUCTION_ALIAS
from neuropredict.settings.schema import load_params
from neuropredict.stream.stats import summary
from tests.conftest import REPO, new_stream, project_env
from tests.integration.kafka_helpers import WorkerThread, publish, replay, wait_for

PROMETHEUS_DIR = REPO / "serving" / "prometheus"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of the endpoint: (name, sorted labels) -> value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_promtool_accepts_both_configurations_and_every_rule_test_passes(tmp_path, monkeypatch):
    tool = promtool()
    rules = subprocess.run([tool, "test", "rules", "alerts.test.yml"], cwd=PROMETHEUS_DIR, capture_output=True,
                           text=True)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS_DIR / "alerts.test.yml").read_text()))
    defined = {r["alert"] for g in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
               for r in g["rules"]}
    assert tested == defined and len(defined) == 7  # every alert has a test

    monkeypatch.setenv("NEUROPREDICT_ROOT", str(REPO))
    process = tmp_path / "prometheus.yml"  # the twin of compose's: the workers from a file
    process.write_text(yaml.safe_dump(monitoring.process_config()))
    for config in (PROMETHEUS_DIR / "prometheus.yml", process):
        checked = subprocess.run([tool, "check", "config", str(config)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr


@dataclass
class Scored:
    """A worker that scored a replay (with malformed records) on the embedded broker, its endpoint
    scraped once it had consumed everything."""

    params: object
    stream: object
    sent: dict
    scraped: dict
    stats: object
    worker: object
    healthy: subprocess.CompletedProcess  # compose's health check while it served ...
    stopped: subprocess.CompletedProcess  # ... and once it had stopped


@pytest.fixture(scope="module")
def scored(trained_project, tansu):
    with pytest.MonkeyPatch.context() as mp:
        for key, value in project_env(trained_project).items():
            if key.startswith(("NEUROPREDICT_", "MLFLOW_")):
                mp.setenv(key, value)
        params = load_params(trained_project / "params.yaml")
        stream = new_stream(tansu)
        sent = publish(stream, replay(trained_project, params, "2024-07-01"), serving=params.serving, malformed=9)
        port = procs.free_ports(1)[0]
        mp.setenv("NEUROPREDICT_METRICS_PORT", str(port))
        w = WorkerThread(params, stream)
        try:
            wait_for(lambda: w.stats.consumed >= sent["ticks"] + sent["malformed"],
                     what="the worker to consume everything")
            got = scrape(port)
            healthy = health_check(port)
        finally:
            w.stop()
        yield Scored(params, stream, sent, got, w.stats, w.worker, healthy, health_check(port))


def health_check(port: int) -> subprocess.CompletedProcess:
    """The worker's health check, as compose's `healthcheck` runs it (tests/unit/test_compose.py)."""
    return subprocess.run([sys.executable, "-m", "neuropredict.stream.health"], capture_output=True, text=True,
                          env={**os.environ, "NEUROPREDICT_METRICS_PORT": str(port)}, timeout=60)


def test_the_health_check_passes_a_serving_worker_and_fails_a_stopped_one(scored):
    assert scored.healthy.returncode == 0 and scored.healthy.stdout.startswith("healthy: serving, last poll")
    assert scored.stopped.returncode == 1 and scored.stopped.stdout.startswith("unhealthy: no answer")


def test_a_workers_endpoint_says_what_the_worker_counted(scored):
    params, sent, got, stats = scored.params, scored.sent, scored.scraped, scored.stats
    total = sent["ticks"] + sent["malformed"]

    def value(name: str, **labels) -> float:
        return got[(f"neuropredict_{name}", tuple(sorted(labels.items())))]

    # the counts, as the worker's one-line summary gives them
    line = summary(stats)
    consumed, predicted, dead, warmup = map(int, re.match(
        r"(\d+) consumed = (\d+) predicted \+ (\d+) dead-lettered \+ (\d+) warm-up", line).groups())
    assert value("consumed_ticks_total") == consumed == total
    assert value("polled_ticks_total") == total  # nothing was polled twice: no rewind
    assert [value("ticks_total", outcome=o) for o in ("predicted", "dead_lettered", "warmup")] == [
        predicted, dead, warmup]
    assert value("dead_letters_total", reason="malformed") == dead == 9
    assert value("batches_total") == stats.batches
    assert value("rewinds_total") == 0 and value("model_swaps_total") == 0
    assert value("batch_duration_seconds_count") == stats.batches
    ticks_parsed = consumed - sent["malformed"]  # a malformed record has no tick to forecast
    assert value("tick_to_forecast_seconds_count") == ticks_parsed
    assert value("tick_to_forecast_seconds_bucket", le="+Inf") == ticks_parsed
    assert value("worker_phase", phase="serving") == 1 and value("worker_phase", phase="waiting") == 0
    assert value("served_model_info", alias=PRODUCTION_ALIAS, model=params.register.model_name,
                 version=scored.worker.version) == 1
    lags = {k: v for k, v in got.items() if k[0] == "neuropredict_consumer_lag_records"}
    assert len(lags) == 4 and set(lags.values()) == {0}  # four partitions, all read to the end

    # every metric is one of the catalog the docs list; all but transactions (Tansu: at-least-once) have samples
    histograms = {spec.exposed for spec in metrics.CATALOG.values() if spec.kind == "histogram"}
    scraped = {re.sub(r"_(bucket|sum|count)$", "", name) if re.sub(r"_(bucket|sum|count)$", "", name) in histograms
               else name for name, _ in got}
    assert scraped == {spec.exposed for spec in metrics.CATALOG.values()} - {"neuropredict_transactions_total"}

    # the rolling figures: with fewer scored ticks than the window, the whole run's (as in the summary)
    version = {"alias": PRODUCTION_ALIAS, "version": scored.worker.version}
    figures = stats.overall.figures()
    assert value("scored_ticks_total", **version) == figures["scored"] == value("live_window_ticks", **version)
    assert figures["scored"] < stats.recent.ticks
    assert f"live MSE {value('live_mse', **version):.4f} vs persistence {value('live_persistence_mse', **version):.4f}" \
           f" (skill {100 * value('live_skill_ratio', **version):+.2f} %)" in line
    assert value("live_dm_t", **version) == pytest.approx(figures["dm_t"])
    for level in (0.8, 0.95):
        coverage = value("live_interval_coverage_ratio", **version, method="model", level=f"{level:g}")
        assert f"{intervals.label(level)} %: {100 * coverage:.1f} %" in line
        n, inside, _ = stats.overall.intervals[("model", level)]
        assert value("live_interval_coverage_p_value", **version, method="model", level=f"{level:g}") == \
            pytest.approx(intervals.binomial_p(int(inside), int(n), level))


def test_the_live_view_shows_evaluates_figures_and_renders_in_a_real_browser(scored, tmp_path):
    from neuropredict import live_view, stream_report
    from neuropredict.evaluation import score_rows
    from neuropredict.stream.rules import TickRules

    rules = TickRules.from_params(scored.params.validate, scored.params.serving)
    view = live_view.LiveView(rules, False, scored.stream.topics, scored.stream.bootstrap, last=300)
    port = procs.free_ports(1)[0]
    server = live_view.serve(view, port)
    try:
        url = f"http://127.0.0.1:{port}"
        data = json.load(urllib.request.urlopen(f"{url}/data.json", timeout=30))
        shot = tmp_path / "view.png"
        browser = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                  "--window-size=1400,1100", f"--screenshot={shot}", f"{url}/"],
                                 capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    # its figures are evaluate's, on the same rows (the newest 300 forecasts of each partition: all of them here)
    rows = stream_report.joined_tail(rules, False, scored.stream.topics, 300, scored.stream.bootstrap)
    evaluated = score_rows(rows)["_pooled"]
    pooled = data["figures"]["_pooled"]
    assert pooled["n"] == evaluated["n"] == scored.stats.overall.n
    assert pooled["mse"] == pytest.approx(evaluated["mse"]) and pooled["skill"] == pytest.approx(evaluated["skill"])
    assert pooled["coverage_80"] == pytest.approx(100 * scored.stats.overall.intervals[("model", 0.8)][1]
                                                  / scored.stats.overall.intervals[("model", 0.8)][0])
    # each symbol's newest forecast is open (its price has not come) and drawn beyond the last price
    assert set(data["open"]) == set(scored.params.data.symbols) == set(data["series"])
    for symbol, forecast in data["open"].items():
        assert forecast["lower_95"] <= forecast["lower_80"] <= forecast["predicted_price"] <= forecast["upper_80"] \
            <= forecast["upper_95"]

    assert shot.is_file(), browser.stdout + browser.stderr
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert image.shape[:2] == (1100, 1400)
    # the chart was loaded and drawn: red forecast/interval pixels, and far from a blank page
    reddish = (image[..., 0] > 150) & (image[..., 1] < 120) & (image[..., 2] < 120)
    assert reddish.sum() > 500 and image.std() > 20
    if os.environ.get("NEUROPREDICT_SCREENSHOT_TO"):  # docs/images/live-view.png (docs/live_view.md says how)
        shutil.copy(shot, os.environ["NEUROPREDICT_SCREENSHOT_TO"])


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing in CI: .ci/run installs Debian's chromium package")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return found
