"""`make demo`: the main job end to end on the embedded defaults (BROKER=apache: on Apache Kafka).

train (dvc repro, skipped when up to date) -> Kafka + MLflow UI -> serving worker ->
replay the held-out test period -> evaluate the stream -> a summary beside persistence.
Services the demo started are stopped at the end unless it was asked to keep them.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from neuropredict import (
    intervals,
    kafka_io,
    producer,
    registry,
    retry,
    scratch,
    services,
    stream_report,
    tracking,
    training,
    workers,
)
from neuropredict.console import tool, tools_env
from neuropredict.errors import ConfigError, ServiceError
from neuropredict.features import series_splits
from neuropredict.files import read_json, write_json
from neuropredict.procs import Service
from neuropredict.settings import contracts, environment
from neuropredict.settings.contracts import Topics
from neuropredict.settings.paths import paths, project_root
from neuropredict.settings.schema import load_params, params_from_dict
from neuropredict.stream.rules import TickRules

log = logging.getLogger(__name__)

MALFORMED = 7  # a few broken ticks in the replay show the dead-letter path at work


class Steps:
    """Numbered progress lines with the time each step took."""

    def __init__(self, total: int):
        self.total, self.n, self.t = total, 0, time.perf_counter()
        self.timings: dict[str, float] = {}
        self.current = ""

    def next(self, title: str) -> None:
        self._close()
        self.n += 1
        self.current, self.t = title, time.perf_counter()
        print(f"\n==> [{self.n}/{self.total}] {title}", flush=True)

    def _close(self) -> None:
        if self.current:
            self.timings[self.current] = time.perf_counter() - self.t

    def done(self) -> None:
        self._close()
        self.current = ""


def train() -> None:
    """dvc repro: stages whose inputs did not change are skipped, and `register` runs whenever the
    registry lacks this pipeline's model (the `registry` stage asks it)."""
    training.repro(paths(project_root()))


def start_services(params, topics: Topics, broker: str = "tansu") -> list[str]:
    """Broker + UI, with an empty stream: an embedded broker kept from an earlier demo is
    restarted (it forgets everything); the local Apache Kafka keeps its data, so the topics of an
    earlier demo are deleted and created again. Returns the names of the services it started."""
    before = set(services.running())
    if "kafka" in before and not environment.kafka_is_external():
        services.stop(["kafka"])
        before.discard("kafka")
    result = services.up(params.kafka, topics, ui=True, broker=broker)
    for name, svc in result["services"].items():
        print(f"  {name:<10} {svc.url}")
    if environment.kafka_is_external():
        require_fresh_stream(topics)
    elif broker == "apache" and services.reset_stream(params.kafka, topics, result["replication"]):
        print("  emptied the topics of an earlier demo (Apache Kafka keeps them across restarts)")
    return [name for name in result["services"] if name not in before]


def require_fresh_stream(topics: Topics) -> None:
    """The demo replays history into the input topic. On a cluster that holds an earlier replay,
    the worker would resume after it and rightly dead-letter the history as out of order."""
    if services.status(topics).get("group_committed", {}).get(topics.prices, 0) > 0:
        raise ServiceError(f"{environment.kafka_bootstrap()} already holds a stream that group {topics.group} "
                           f"has scored; the demo replays history, which would arrive out of order: run it on "
                           f"fresh topics (set NEUROPREDICT_TOPIC_PREFIX), or unset KAFKA_BOOTSTRAP_SERVERS "
                           f"for the embedded broker")


def start_worker(state_dir: Path, group: str) -> tuple[Service, Path]:
    """`neuropredict serve`, ready when it owns its partitions; its final stats go to a file."""
    stats_path = state_dir / "worker-stats.json"
    stats_path.unlink(missing_ok=True)
    worker = workers.start("worker", [tool("neuropredict"), "serve", "--stats-out", str(stats_path)],
                           state_dir / "worker.log", tools_env(), project_root(), group)
    workers.wait_ready([worker])
    print(f"  worker pid {worker.pid}, log {worker.log}")
    return worker, stats_path


def wait_until_scored(topics: Topics, expected_outputs: int, expected_dead: int, timeout_s: float = 300) -> None:
    counts: Counter = Counter()
    batches = kafka_io.follow(None, [topics.predictions, topics.dead_letters])

    def scored() -> bool:
        counts.update(record.topic for record in next(batches))
        return counts[topics.predictions] >= expected_outputs and counts[topics.dead_letters] >= expected_dead

    try:
        retry.wait_until(scored, timeout_s, "the forecasts", every_s=0)
    except ServiceError:
        raise ServiceError(f"only {counts[topics.predictions]} of {expected_outputs} predictions and "
                           f"{counts[topics.dead_letters]} of {expected_dead} dead letters arrived within "
                           f"{timeout_s:g} s; see .neuropredict/worker.log") from None
    finally:
        batches.close()


def run_variant(variant: str, keep: bool = False, broker: str = "tansu") -> int:
    """The demo on a variant (`intraday`: the 1-minute model; `regime-2020`: trained through 2019,
    tested on 2020): params.yaml with params-<variant>.yaml's keys, in a workspace of its own (its
    own DVC outputs and MLflow store), so the main model is untouched."""
    import os

    import yaml

    project = paths()
    overlay_file = project.variant_params_file(variant)
    if not overlay_file.is_file():
        raise ConfigError(f"no variant {variant!r}: {overlay_file.name} does not exist "
                          f"(variants: {', '.join(project.variants()) or 'none'})")
    params = scratch.overlay(yaml.safe_load(project.params_file.read_text()), yaml.safe_load(overlay_file.read_text()))
    params_from_dict(params)  # a bad key stops here, named
    workspace = scratch.copy_project(project.root, project.variant_dir(variant), params)
    print(f"{variant} demo in {workspace} (params.yaml + {overlay_file.name}; its own DVC outputs "
          f"and MLflow store: `cd {workspace}` to look around)")
    env = scratch.scratch_env(workspace)
    if environment.kafka_is_external():  # a cluster of the user's own is used as for the daily demo
        env["KAFKA_BOOTSTRAP_SERVERS"] = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    return subprocess.call([tool("neuropredict"), "demo", "--broker", broker, *(["--keep"] if keep else [])],
                           cwd=workspace, env=env)


def run(keep: bool = False, broker: str = "tansu") -> int:
    started = time.perf_counter()
    steps = Steps(6)
    steps.next("train: dvc repro (stages whose inputs did not change are skipped)")
    train()
    params = load_params()
    topics = environment.topics(params.kafka.topic_prefix)
    version = registry.alias_version(params.register.model_name)
    started_services: list[str] = []
    worker = None
    try:
        steps.next(f"services: {'Apache Kafka' if broker == 'apache' else 'embedded Kafka broker'} + MLflow UI")
        started_services = start_services(params, topics, broker)
        steps.next(f"serve: worker on {topics.prices} with {params.register.model_name}@production (v{version})")
        worker, stats_path = start_worker(paths().state_dir, topics.group)
        result = replay_and_evaluate(params, topics, version, steps, on_scored=lambda: workers.stop([worker]))
        steps.next("summary")
        steps.done()
        report(summary(result, read_json(stats_path, default={}), version, steps.timings,
                       time.perf_counter() - started, started_services, keep),
               "demo" if broker == "tansu" else f"demo-{broker}",
               "neuropredict demo" if broker == "tansu" else f"neuropredict demo --broker {broker}")
    finally:
        if worker is not None:
            workers.stop([worker])
        _stop_services(started_services, keep)
    return 0


def run_topology(count: int, keep: bool = False) -> int:
    """serving/compose.yaml's topology as processes: Apache Kafka, PostgreSQL and the MLflow server
    (basic-auth), then `count` workers configured from the compose file; trains into the server."""
    started = time.perf_counter()
    steps = Steps(6)
    params = load_params()
    topics = environment.topics(params.kafka.topic_prefix)
    before = set(services.running())
    try:
        steps.next("services: Apache Kafka, PostgreSQL, MLflow server (basic-auth), as serving/compose.yaml")
        result = services.up(params.kafka, topics, broker="apache", tracking="server")
        for name, svc in result["services"].items():
            print(f"  {name:<13} {svc.url}")
        if services.reset_stream(params.kafka, topics, result["replication"]):
            print("  emptied the topics of an earlier run (Apache Kafka keeps them across restarts)")
        use_tracking_server(result["services"]["mlflow-server"].url)
        steps.next("train: dvc repro, registering into the MLflow server")
        train()
        version = registry.alias_version(params.register.model_name)
        steps.next(f"serve: {count} workers and the rollback guard, configured from serving/compose.yaml")
        result = services.up(params.kafka, topics, broker="apache", tracking="server", workers=count,
                             monitoring_on=_prometheus_installed())
        for name, svc in result["services"].items():
            if name.startswith(("worker-", "guard", "prometheus")):
                print(f"  {name:<13} pid {svc.pid}, {svc.url}, log {svc.log}")
        scored = replay_and_evaluate(params, topics, version, steps)
        steps.next("summary")
        steps.done()
        report(summary(scored, {}, version, steps.timings, time.perf_counter() - started,
                       sorted(set(services.running()) - before), keep), "demo-cluster",
               f"neuropredict demo --workers {count}")
    finally:
        _stop_services(sorted(set(services.running()) - before), keep)
    return 0


def _prometheus_installed() -> bool:
    """compose's topology includes Prometheus; without Debian's package the demo goes on and says so."""
    from neuropredict import monitoring

    try:
        monitoring.prometheus_bin()
        return True
    except ServiceError as exc:
        print(f"  no monitoring: {exc}")
        return False


def use_tracking_server(url: str) -> None:
    """Point this process (and the dvc it runs) at the tracking server `up` started, with its credentials."""
    import os

    from neuropredict import tracking_server

    os.environ["MLFLOW_TRACKING_URI"] = url
    auth = tracking_server.credentials()
    if auth:
        os.environ["MLFLOW_TRACKING_USERNAME"] = auth[0]
        os.environ["MLFLOW_TRACKING_PASSWORD"] = auth[1].read_text().strip()


def replay_and_evaluate(params, topics: Topics, version: str, steps: Steps, on_scored=None) -> dict[str, Any]:
    """Replay the held-out test period into Kafka, wait for every forecast, score them."""
    project = paths()
    steps.next("replay: the held-out test period through Kafka")
    window = registry.model_window(params.register.model_name, version)
    ticks, origin = producer.replay_period(params, project, window)
    since_ms = int(time.time() * 1000) - 1000
    sent = producer.publish(ticks, topics.prices, serving=params.serving, malformed=MALFORMED)
    print(f"  sent {sent['ticks']} real ticks from {origin} ({window} lead-in ticks per symbol) "
          f"+ {sent['malformed']} malformed, in {sent['seconds']:.2f} s")
    wait_until_scored(topics, producer.expected_forecasts(ticks, window, params.data.intraday), MALFORMED)
    if on_scored:
        on_scored()
    steps.next("evaluate: join each forecast with the next actual price")
    rules = TickRules.from_params(params.validate, params.serving)
    periods = series_splits(registry.load_series(params, project), params.featurize)
    rows = stream_report.in_period(stream_report.joined_rows(rules, params.data.intraday, topics, since_ms=since_ms),
                                   periods.test_start, periods.end)
    result = stream_report.report(rows, project.reports_dir / "evaluate")
    print(f"  {len(rows)} forecasts scored; report {project.reports_dir / 'evaluate' / 'report.json'}")
    return result


def report(text: str, name: str, command: str) -> None:
    """Print the summary, and keep it with its stamp in reports/<name>.json (the docs show it)."""
    print(text)
    write_json(paths().reports_dir / f"{name}.json", {"measured": tracking.measured(command), "summary": text.strip("\n")})


def _stop_services(started: list[str], keep: bool) -> None:
    if not keep and started:
        stopped = services.down()
        if stopped:
            print(f"stopped {', '.join(stopped)} (KEEP=1 leaves them running)")


def _experiment_url(ui: str, name: str) -> str:
    exp_id = tracking.setup(name)
    return f"{ui}/#/experiments/{exp_id}/runs?workflowType=machine_learning"


def _interval_lines(result: dict[str, Any], worker_stats: dict[str, Any], tags: dict[str, str]) -> list[str]:
    """Per level: streamed coverage beside the offline test coverage, and the live interval score
    beside the static interval's and the baselines' on the same ticks."""
    if not result.get("intervals"):
        return []
    pooled, lines = result["intervals"]["_pooled"], []
    for level in result["interval_levels"]:
        t = intervals.label(level)
        offline = f" (offline test {float(tags[f'test_coverage_{t}']):.1f} %)" if f"test_coverage_{t}" in tags else ""
        others = {name: worker_stats.get(f"live_{method}interval_score_{t}")
                  for name, method in (("static", "conformal_"), ("EWMA", "ewma_"), ("GARCH", "garch_"))}
        versus = ", ".join(f"{name} {v:.3f} %" for name, v in others.items() if v is not None)
        lines.append(f"{t} % interval{'':<3}coverage {pooled[f'coverage_{t}']:.1f} %{offline}, mean width "
                     f"{pooled[f'width_{t}']:.2f} %, interval score {pooled[f'interval_score_{t}']:.3f} %"
                     + (f" (vs {versus})" if versus else ""))
    return lines


def summary(result: dict[str, Any], worker_stats: dict[str, Any], version: str, timings: dict[str, float],
            total_s: float, started: list[str], keep: bool) -> str:
    project = paths()

    def rel(path: Path) -> Path:  # in the project: what a user can open from it, on any machine
        return path.relative_to(project.root)

    pooled = result["scores"]["_pooled"]
    offline_mse = registry.version_tags(load_params().register.model_name, version).get("test_mse")
    lines = ["", "=" * 78, "KafkaNeuroPredict demo: summary", "=" * 78,
             f"model            {load_params().register.model_name} v{version} (alias production)",
             f"live MSE         {pooled['mse']:.4f} $^2 over {int(pooled['n'])} streamed forecasts",
             f"persistence MSE  {pooled['persistence_mse']:.4f} $^2 on the same ticks "
             f"(skill {100 * pooled['skill']:+.2f} %, mean over symbols {100 * pooled['mean_skill']:+.2f} %)"]
    if offline_mse:
        lines.append(f"offline test MSE {float(offline_mse):.4f} $^2 of v{version} (registered with it): "
                     f"live - offline = {pooled['mse'] - float(offline_mse):+.1e}")
    lines.append(f"{'symbol':<8}{'live MSE':>12}{'persistence':>13}{'skill %':>9}{'DM t':>7}")
    for symbol, m in result["scores"].items():
        if not symbol.startswith("_"):
            lines.append(f"{symbol:<8}{m['mse']:>12.4f}{m['persistence_mse']:>13.4f}{100 * m['skill']:>+9.2f}"
                         f"{m['dm_t']:>+7.2f}")
    lines += _interval_lines(result, worker_stats, registry.version_tags(load_params().register.model_name,
                                                                          version))
    if worker_stats:
        lines.append(f"worker           {worker_stats.get('consumed', 0):.0f} consumed = "
                     f"{worker_stats.get('predicted', 0):.0f} predicted + {worker_stats.get('dlq_count', 0):.0f} "
                     f"dead-lettered + {worker_stats.get('warmup_count', 0):.0f} warm-up; "
                     f"{worker_stats.get('busy_throughput_ticks_per_s', 0):,.0f} ticks/s while busy, "
                     f"p99 tick-to-prediction latency {worker_stats.get('latency_ms_p99', float('nan')):.0f} ms "
                     f"(a burst replay: queueing; see bench/ for latency at a fixed rate)")
    lines.append("time             " + ", ".join(f"{k.split(':')[0]} {v:.1f} s" for k, v in timings.items())
                 + f"; total {total_s:.1f} s")
    ui = f"http://127.0.0.1:{environment.mlflow_ui_port()}"
    running = keep or not {"mlflow-ui", "mlflow-server"} & set(started)
    lines += [f"MLflow UI        {ui}" + ("" if running else "  (stopped; `neuropredict ui` opens it again)"),
              f"  training runs  {_experiment_url(ui, contracts.EXPERIMENT_NAME)}  (expand 'pipeline': stages, "
              f"trials; compare best-lstm with best-gru)",
              f"  live serving   {_experiment_url(ui, contracts.SERVING_EXPERIMENT_NAME)}",
              f"  registry       {ui}/#/models/{load_params().register.model_name}",
              f"reports          {rel(project.reports_dir / 'evaluate' / 'report.json')}, "
              f"{rel(project.reports_dir / 'evaluate' / 'predicted_vs_actual.png')}",
              f"                 {rel(project.plots_dir)}/*.png (dvc plots show), "
              f"{rel(project.validation_dir / 'data_docs' / 'index.html')}",
              "=" * 78]
    return "\n".join(lines)
