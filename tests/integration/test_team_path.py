"""The team path for real: serving/compose.yaml's topology as processes here, with no Docker.

One topology for the module, started as `make cluster WORKERS=3 KEEP=1` starts it: Apache Kafka,
PostgreSQL, the MLflow server on it (basic-auth) and three workers configured from the compose
file; `dvc repro` trains and registers into the server; the test year is replayed through it.
The tests then use it as a team would, from a shell that ran `eval "$(neuropredict env)"`, in
order: promote (all three hot-swap), kill the server mid-stream, stop the workers and count
every metric point, look for the secrets everywhere. The team commands in docs/operations.md are
the ones run here.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pytest
import yaml

from neuropredict import brokers, procs, producer
from neuropredict.settings import contracts
from neuropredict.settings.contracts import Topics
from neuropredict.settings.schema import load_params
from neuropredict.stream import status
from tests.conftest import (
    BIN,
    REPO,
    TINY_PARAMS,
    Stream,
    copy_project,
    distinct_ports,
    load_json,
    make_project,
    project_env,
    require_apache_kafka,
    require_postgres,
    run,
)
from tests.integration.kafka_helpers import Sender, inputs, predictions, replay, wait_for

pytestmark = pytest.mark.slow

WORKERS = 3
MAKE_CLUSTER = f"make cluster WORKERS={WORKERS} KEEP=1"
DOC_MARKER = "<!-- run by tests/integration/test_team_path.py -->"
ENV_LINE = 'eval "$(neuropredict env)"'


@dataclass
class Team:
    root: Path
    env: dict[str, str]  # a shell before `eval "$(neuropredict env)"`
    cluster: subprocess.CompletedProcess
    ran: list[str] = field(default_factory=list)  # every command, as a user types it
    figures: dict = field(default_factory=dict)

    def sh(self, command: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        """`command` in a shell that ran `eval "$(neuropredict env)"`, as docs/operations.md says."""
        self.ran += [ENV_LINE, command] if ENV_LINE not in self.ran else [command]
        return run(["bash", "-c", f'set -e; eval "$(neuropredict env)"; {command}'], self.root, self.env,
                   check=check, timeout=timeout)

    def state(self) -> dict:
        return json.loads((self.root / ".neuropredict" / "services.json").read_text())

    @property
    def server(self) -> str:
        return self.state()["mlflow-server"]["url"]

    @property
    def bootstrap(self) -> str:
        return self.state()["kafka-1"]["url"]

    @property
    def stream(self) -> Stream:
        """The topology's default topics and group (it is the whole cluster's only user)."""
        return Stream(brokers.ScratchBroker("apache", self.bootstrap, [], 1), Topics())

    @property
    def password(self) -> str:
        return (self.root / ".neuropredict/tracking-server/secrets/admin-password").read_text().strip()

    def worker_logs(self) -> list[str]:
        return [(self.root / f".neuropredict/worker-{i}.log").read_text() for i in range(1, WORKERS + 1)]


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    require_apache_kafka()
    require_postgres()
    root = make_project(tmp_path_factory.mktemp("team") / "project", TINY_PARAMS)
    kafka_port, (ui_port, pg_port, prometheus_port) = distinct_ports(others=3)
    env = {**project_env(root), "NEUROPREDICT_KAFKA_PORT": str(kafka_port), "NEUROPREDICT_UI_PORT": str(ui_port),
           "NEUROPREDICT_PG_PORT": str(pg_port), "NEUROPREDICT_PROMETHEUS_PORT": str(prometheus_port)}
    recipe = subprocess.run(["make", "-n", "-s", *MAKE_CLUSTER.split()[1:]], cwd=REPO, capture_output=True,
                            text=True).stdout
    command = next(line for line in recipe.splitlines() if " demo " in line).split("/")[-1]  # neuropredict demo ...
    cluster = run(command.split(), root, env, check=False, timeout=900)
    team = Team(root, env, cluster, ran=[MAKE_CLUSTER])
    try:
        yield team
    finally:
        run(["neuropredict", "down"], root, env, check=False)
        data_dir = json.loads((root / ".neuropredict/tracking-server/server.json").read_text())["data_dir"]
        shutil.rmtree(data_dir, ignore_errors=True)  # outside the project when PostgreSQL runs as another user
        print(f"\nteam path figures: {json.dumps(team.figures)}")


@pytest.fixture
def as_team(team, monkeypatch):
    """This test process as a client of the team's server (the same variables `neuropredict env` sets)."""
    for key, value in team.env.items():
        if key.startswith(("NEUROPREDICT_", "MLFLOW_")):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team.server)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", team.password)
    return mlflow.tracking.MlflowClient(tracking_uri=team.server, registry_uri=team.server)


def test_make_cluster_trains_into_the_server_and_scores_the_test_year_as_offline(team, as_team):
    out = team.cluster.stdout
    assert team.cluster.returncode == 0, f"{out[-3000:]}\n{team.cluster.stderr[-3000:]}"
    assert "Traceback" not in team.cluster.stderr
    live_minus_offline = float(re.search(r"live - offline = ([-+0-9.e]+)", out).group(1))
    assert abs(live_minus_offline) < 1e-6
    team.figures["forecasts_scored"] = int(re.search(r"over (\d+) streamed forecasts", out).group(1))
    # dvc repro registered into the server: a production version, and every stage's run is there
    assert re.search(r"^\s+1\s+\S*production", team.sh("neuropredict models").stdout, re.MULTILINE)
    runs = mlflow.search_runs(experiment_names=[contracts.EXPERIMENT_NAME], output_format="list")
    stages = {r.data.tags.get("neuropredict.stage") for r in runs}
    assert {"download", "validate", "featurize", "tune", "register"} <= stages


def test_the_workers_run_as_serving_compose_yaml_configures_them(team, as_team):
    from neuropredict import topology, tracking_server

    state = team.state()
    workers = [svc for name, svc in sorted(state.items()) if name.startswith("worker-")]
    assert len(workers) == WORKERS
    compose = yaml.safe_load((REPO / "serving" / "compose.yaml").read_text())["services"]["worker"]
    expected = topology.worker_environment({"kafka": team.bootstrap, "mlflow": team.server.removeprefix("http://")},
                                           tracking_server.compose_variables())
    assigned = []
    for svc, log in zip(workers, team.worker_logs()):
        environ = dict(item.split("=", 1) for item in
                       Path(f"/proc/{svc['pid']}/environ").read_bytes().decode().split("\0") if "=" in item)
        own = [key for key in compose["environment"] if key.startswith("NEUROPREDICT_METRICS_")]  # per worker here
        assert {key: environ.get(key) for key in compose["environment"] if key not in own} == {
            key: expected[key] for key in compose["environment"] if key not in own}
        assert svc["url"] == f"http://127.0.0.1:{environ['NEUROPREDICT_METRICS_PORT']}/metrics"
        # its own MLflow user; the password in a file only it (and the server's owner) can read, not in its environment
        assert environ["MLFLOW_TRACKING_USERNAME"] == "worker" and "MLFLOW_TRACKING_PASSWORD" not in environ
        assert Path(environ["MLFLOW_TRACKING_PASSWORD_FILE"]).stat().st_mode & 0o077 == 0
        assert environ["MLFLOW_TRACKING_URI"] == team.server and environ["KAFKA_BOOTSTRAP_SERVERS"] == team.bootstrap
        cmdline = Path(f"/proc/{svc['pid']}/cmdline").read_bytes().decode().split("\0")
        assert cmdline[1:3] == ["serving/worker.py", "--wait"]  # the image's ENTRYPOINT
        assert "(exactly-once)" in log
        worker_status = status.read(Path(svc["log"]).with_suffix(".status.json"))
        assert worker_status["phase"] == status.SERVING and worker_status["pid"] == svc["pid"]
        assigned.append(set(worker_status["partitions"]))
    assert set().union(*assigned) == {0, 1, 2, 3} and sum(map(len, assigned)) == 4  # the group splits them


def test_the_workers_user_reads_the_model_and_writes_its_runs_and_nothing_else(team, as_team):
    from mlflow.exceptions import MlflowException

    secret = team.root / ".neuropredict/tracking-server/secrets/worker-password"
    worker = mlflow.tracking.MlflowClient(tracking_uri=team.server, registry_uri=team.server)
    name = "stock-price-forecaster"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", "worker")
        mp.setenv("MLFLOW_TRACKING_PASSWORD", secret.read_text().strip())
        assert worker.get_model_version_by_alias(name, "production").version == "1"  # reads the model
        serving = worker.get_experiment_by_name(contracts.SERVING_EXPERIMENT_NAME).experiment_id
        worker.set_terminated(worker.create_run(serving).info.run_id)  # writes its runs
        training = worker.get_experiment_by_name(contracts.EXPERIMENT_NAME).experiment_id
        for refused in (lambda: worker.set_registered_model_alias(name, "production", "1"),
                        lambda: worker.create_run(training),
                        lambda: worker.delete_experiment(serving)):
            with pytest.raises(MlflowException, match="PERMISSION_DENIED|403"):
                refused()
    workers_runs = as_team.search_runs([serving], max_results=1000)
    assert len(workers_runs) >= WORKERS + 1  # the workers' own runs went there


def test_an_unauthenticated_client_is_refused(team):
    from neuropredict.procs import http_status

    api = f"{team.server}/api/2.0/mlflow/experiments/search?max_results=1"

    def basic(user: str, password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    # checking a password hashes it on purpose slowly: a loaded CI run took over the 2 s a probe waits
    assert http_status(api, timeout_s=60) == 401
    assert http_status(api, basic("admin", "not-the-password"), timeout_s=60) == 401
    assert http_status(api, basic("admin", team.password), timeout_s=60) == 200
    anonymous = {k: v for k, v in team.env.items() if not k.startswith("MLFLOW_TRACKING_")}
    refused = run(["neuropredict", "models"], team.root, {**anonymous, "MLFLOW_TRACKING_URI": team.server}, check=False)
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert "401" in refused.stderr or "not authenticated" in refused.stderr.lower()


def test_a_promotion_through_the_server_hot_swaps_all_three_workers(team, as_team):
    from tests.integration.test_serving import _register_another_version

    params = load_params(team.root / "params.yaml")
    version = _register_another_version(team.root, params)
    assert version == "2"  # docs/operations.md promotes version 2
    ticks = replay(team.root, params, start=None, symbols=("GOOGL", "AMZN"))
    half = len(ticks) // 2  # the first half scored by v1, the second by v2
    Sender(ticks[:half], team.stream, rate=0, serving=params.serving).run()
    team.sh(f"neuropredict promote {version}")
    promoted = time.monotonic()  # the alias moved just before the command returned
    delays: dict[int, float] = {}

    def all_swapped() -> bool:
        for i, log in enumerate(team.worker_logs()):
            if i not in delays and f"-> v{version} (alias production moved)" in log:
                delays[i] = time.monotonic() - promoted
        return len(delays) == WORKERS

    wait_for(all_swapped, timeout_s=90, every_s=0.05, what="the three workers to hot-swap")
    assert len(delays) == WORKERS, f"only workers {sorted(delays)} swapped"
    Sender(ticks[half:], team.stream, rate=0, serving=params.serving).run()
    team.figures["hot_swap_delay_s"] = sorted(round(d, 2) for d in delays.values())
    window = params.featurize.window
    wait_for(lambda: sum(o["symbol"] in ("GOOGL", "AMZN") for o in predictions(team.stream))
             >= producer.expected_forecasts(ticks, window, False), what="every GOOGL/AMZN forecast")
    by_partition: dict[int, list[str]] = {}
    for out in predictions(team.stream):
        if out["symbol"] in ("GOOGL", "AMZN"):
            by_partition.setdefault(out["input_partition"], []).append(out["model_version"])
    for versions in by_partition.values():  # each partition switches once, never back
        assert versions == sorted(versions) and versions[-1] == version


def test_the_server_killed_mid_stream_scoring_goes_on_and_the_buffered_metrics_arrive(team, as_team):
    params = load_params(team.root / "params.yaml")
    os.killpg(team.state()["mlflow-server"]["pid"], signal.SIGKILL)
    ticks = replay(team.root, params, start=None, symbols=("META", "NVDA"))
    Sender(ticks, team.stream, rate=0, serving=params.serving).run()
    wait_for(lambda: sum(o["symbol"] in ("META", "NVDA") for o in predictions(team.stream))
             >= producer.expected_forecasts(ticks, params.featurize.window, False), what="scoring during the outage")
    wait_for(lambda: any("live metrics buffered" in log for log in team.worker_logs()), what="the outage noticed")
    team.sh("neuropredict up --broker apache --tracking server")  # starts what is not running: the server
    total = len(inputs(team.stream))
    runs = _worker_runs(team)

    def consumed_on_the_server() -> float:
        return sum(as_team.get_run(run_id).data.metrics.get("consumed", 0) for run_id in runs)

    # before the kill the server had less: META and NVDA were not sent yet (a batch a rebalance
    # aborted is consumed twice, hence >=)
    wait_for(lambda: consumed_on_the_server() >= total, timeout_s=120, every_s=1,
             what=f"the buffered metrics to add up to the {total} inputs")


def test_prometheus_scrapes_every_worker_and_a_sigkilled_one_raises_worker_down_until_up_restarts_it(team):
    """`make cluster` runs Prometheus as compose does; it finds the workers in the file `up` keeps
    from its services state, so a worker `up` starts again is scraped again."""
    prometheus = team.state()["prometheus"]["url"]

    def targets() -> dict[str, str]:
        active = _prometheus(prometheus, "targets")["activeTargets"]
        return {t["labels"]["worker"]: t["health"] for t in active if t["labels"]["job"] == "neuropredict-workers"}

    wait_for(lambda: targets() == {f"worker-{i}": "up" for i in range(1, WORKERS + 1)}, timeout_s=30,
             what="Prometheus to scrape the three workers")
    consumed = _prometheus(prometheus, "query", query="sum(neuropredict_consumed_ticks_total)")["result"]
    assert float(consumed[0]["value"][1]) >= len(inputs(team.stream))  # a rebalance's aborted batch counts twice

    def firing() -> set[str]:
        return {a["labels"].get("worker") for a in _prometheus(prometheus, "alerts")["alerts"]
                if a["labels"]["alertname"] == "WorkerDown" and a["state"] == "firing"}

    before = team.state()["worker-2"]
    os.kill(before["pid"], signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: firing() == {"worker-2"}, timeout_s=180, every_s=1, what="WorkerDown to fire for worker-2")
    team.figures["worker_down_alert_s"] = round(time.monotonic() - killed, 1)  # the rule's `for: 1m`, plus scrapes
    team.sh(f"neuropredict up --broker apache --tracking server --workers {WORKERS} --monitoring")
    after = team.state()["worker-2"]
    assert after["pid"] != before["pid"] and after["url"] == before["url"]  # the same endpoint: the same target
    wait_for(lambda: targets().get("worker-2") == "up" and not firing(), timeout_s=60, every_s=1,
             what="the restarted worker-2 scraped and the alert resolved")


def _prometheus(url: str, endpoint: str, **query) -> dict:
    import urllib.parse
    import urllib.request

    with urllib.request.urlopen(f"{url}/api/v1/{endpoint}?{urllib.parse.urlencode(query)}", timeout=5) as resp:
        answer = json.load(resp)
    assert answer["status"] == "success", answer
    return answer["data"]


def test_three_workers_logged_every_metric_point_and_no_secret_is_anywhere(team, as_team):
    state = team.state()
    pids = [svc["pid"] for name, svc in state.items() if name.startswith("worker-")]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)  # each logs its final snapshot and says how many it logged
    wait_for(lambda: not any(map(procs.alive, pids)), timeout_s=60, what="the workers to stop")
    written = received = repeated = 0
    for log in team.worker_logs():
        logged, run_id = re.search(r"live metrics: (\d+) snapshots logged to MLflow run (\w+)", log).groups()
        steps = sorted(m.step for m in as_team.get_metric_history(run_id, "consumed"))
        assert sorted(set(steps)) == list(range(int(logged)))  # none lost
        # a batch the killed server stored but never acknowledged is sent again: at-least-once
        written, received = written + int(logged), received + len(set(steps))
        repeated += len(steps) - len(set(steps))
        assert len(steps) - len(set(steps)) <= 2
        assert "database is locked" not in log and "MLflow store busy" not in log
    team.figures["metric_snapshots_written_received_repeated"] = [written, received, repeated]
    _assert_no_secret_anywhere(team, as_team)


def test_a_project_trained_elsewhere_registers_into_the_server_without_retraining(team, as_team, trained_project,
                                                                                 tmp_path):
    """A project trained into its own SQLite store, pointed at the team server: `dvc repro` (no -f)
    registers its model there, from DVC's cache, and a second repro has nothing to do."""
    root = copy_project(trained_project, tmp_path / "elsewhere")
    env = {**project_env(root), "MLFLOW_TRACKING_URI": team.server, "MLFLOW_TRACKING_USERNAME": "admin",
           "MLFLOW_TRACKING_PASSWORD": team.password}
    name = "stock-price-forecaster"
    before = {v.version for v in as_team.search_model_versions(f"name='{name}'")}
    first = run([str(BIN / "dvc"), "repro"], root, env)
    assert "Stage 'tune' didn't change, skipping" in first.stdout and "Running stage 'register'" in first.stdout
    decision = load_json(root / "metrics/register.json")
    after = {v.version for v in as_team.search_model_versions(f"name='{name}'")}
    assert after - before == {decision["version"]}
    assert as_team.get_model_version_by_alias(name, "challenger").version == decision["version"]
    again = run([str(BIN / "dvc"), "repro"], root, env)
    assert "Stage 'register' didn't change, skipping" in again.stdout
    assert {v.version for v in as_team.search_model_versions(f"name='{name}'")} == after


def test_the_documented_team_commands_are_the_ones_run_here(team):
    assert "postgres" in team.sh("neuropredict status").stdout
    running = team.state()
    stopped = team.sh("neuropredict down").stdout
    assert {"kafka-1", "postgres", "mlflow-server"} <= set(re.findall(r"[\w-]+", stopped))
    assert not any(procs.alive(svc["pid"]) for svc in running.values())
    doc = (REPO / "docs" / "operations.md").read_text()
    block = doc.split(DOC_MARKER, 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    missing = [c for c in commands if c not in team.ran]
    assert not missing, f"docs/operations.md commands no test ran: {missing}; ran {team.ran}"


def _worker_runs(team) -> list[str]:
    return [re.search(r"live metrics -> MLflow run (\w+)", log).group(1) for log in team.worker_logs()]


def _assert_no_secret_anywhere(team, client) -> None:
    secret_dir = team.root / ".neuropredict/tracking-server/secrets"
    found = {path.name: path.read_text().strip() for path in secret_dir.iterdir() if path.name != "pgpass"}
    assert set(found) == {"db-password", "admin-password", "flask-secret-key", "worker-password"}
    texts = {"make cluster output": team.cluster.stdout + team.cluster.stderr}
    for path in team.root.rglob("*"):
        if path.is_file() and secret_dir not in path.parents and ".git" not in path.parts:
            texts[str(path)] = path.read_bytes().decode(errors="replace")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            texts[f"/proc/{pid}/cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            pass
    for experiment in client.search_experiments():
        for r in client.search_runs([experiment.experiment_id], max_results=1000):
            texts[f"run {r.info.run_id}"] = json.dumps([r.data.params, r.data.tags])
    leaks = [(name, where) for name, secret in found.items() for where, text in texts.items() if secret in text]
    assert not leaks, f"secrets found in: {leaks[:5]}"
    assert len(texts) > 50  # the search looked at logs, processes and runs
