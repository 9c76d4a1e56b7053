"""`make demo`'s job, end to end on tiny params: train, serve, replay, evaluate, summarise, clean up."""

import re
import subprocess
import sys

import pytest

from neuropredict import procs
from tests.conftest import (
    TINY_PARAMS,
    copy_project,
    distinct_ports,
    load_json,
    project_env,
    require_apache_kafka,
)

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end_and_summarises_live_mse_beside_persistence(trained_project, tmp_path):
    root = copy_project(trained_project, tmp_path / "p")  # the session's training: `dvc repro` finds it done
    kafka_port, (ui_port,) = distinct_ports(others=1)
    env = {**project_env(root), "NEUROPREDICT_KAFKA_PORT": str(kafka_port), "NEUROPREDICT_UI_PORT": str(ui_port)}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    proc = subprocess.run([sys.executable, "-m", "neuropredict.cli", "demo"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-5000:]
    for step in ("[1/6] train", "[2/6] services", "[3/6] serve", "[4/6] replay", "[5/6] evaluate", "[6/6] summary"):
        assert step in out
    live = float(re.search(r"live MSE\s+([\d.]+)", out).group(1))
    naive = float(re.search(r"persistence MSE\s+([\d.]+)", out).group(1))
    report = load_json(root / "reports/evaluate/report.json")
    assert live == pytest.approx(report["scores"]["_pooled"]["mse"], abs=1e-4)
    assert naive == pytest.approx(report["scores"]["_pooled"]["persistence_mse"], abs=1e-4)
    for symbol in ("AAPL", "MSFT"):
        assert re.search(rf"^{symbol}\s+[\d.]+\s+[\d.]+\s+[+-][\d.]+", out, re.M)
    counts = re.search(r"(\d+) consumed = (\d+) predicted \+ (\d+) dead-lettered \+ (\d+) warm-up", out)
    consumed, predicted, dead, warm = map(int, counts.groups())
    assert consumed == predicted + dead + warm and dead == 7 and warm == 2 * (TINY_PARAMS["featurize"]["window"] - 1)
    assert "live - offline = " in out
    assert f"http://127.0.0.1:{ui_port}" in out
    assert "stopped kafka, mlflow-ui" in out
    assert not procs.port_open("127.0.0.1", kafka_port) and not procs.port_open("127.0.0.1", ui_port)
    assert (root / "reports/evaluate/predicted_vs_actual.png").stat().st_size > 10_000
    kept = load_json(root / "reports/demo.json")  # what the docs show, with what produced it
    assert kept["summary"] in out and kept["measured"]["command"] == "neuropredict demo" and kept["measured"]["date"]


def test_demo_on_apache_kafka_twice_ends_with_the_same_summary_on_an_emptied_stream(trained_project, tmp_path):
    """`make demo BROKER=apache`: Apache Kafka keeps its topics across runs, so the second demo
    empties them first (else its replay would arrive after the first one's, out of order)."""
    require_apache_kafka()
    root = copy_project(trained_project, tmp_path / "copy")
    kafka_port, (ui_port,) = distinct_ports(others=1)
    env = {**project_env(root), "NEUROPREDICT_KAFKA_PORT": str(kafka_port), "NEUROPREDICT_UI_PORT": str(ui_port)}
    runs = [subprocess.run([sys.executable, "-m", "neuropredict.cli", "demo", "--broker", "apache"], cwd=root,
                           env=env, capture_output=True, text=True, timeout=900) for _ in range(2)]
    for proc in runs:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        assert "[2/6] services: Apache Kafka + MLflow UI" in proc.stdout
        assert "stopped kafka-1, mlflow-ui" in proc.stdout
    first, second = (proc.stdout for proc in runs)
    assert "emptied the topics of an earlier demo" in second and "emptied" not in first
    summary = [re.search(r"live MSE\s+([\d.]+) \$\^2 over (\d+)", out).groups() for out in (first, second)]
    assert summary[0] == summary[1]
    assert "live - offline = " in second
    assert not procs.port_open("127.0.0.1", kafka_port)
