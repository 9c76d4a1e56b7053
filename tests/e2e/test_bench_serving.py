"""A smoke run of bench/serving.py on the tiny trained project: it runs and writes its report."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, project_env

pytestmark = pytest.mark.slow


def test_serving_benchmark_smoke_run_writes_its_report(trained_project, tmp_path):
    out = tmp_path / "serving.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "serving.py"), "--smoke", "--out", str(out)],
                          cwd=trained_project, env=project_env(trained_project), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    for key in ("throughput_ticks_per_s", "seed_loop_ticks_per_s", "speedup"):
        assert report[key] > 0, key
    latency = report["latency_ms"]
    assert latency["offered_ticks_per_s"] > 0 and latency["n"] > 0
    assert 0 <= latency["p50"] <= latency["p95"] <= latency["p99"]
    assert set(report["throughput_phase"]["breakdown_seconds"]) >= {"poll", "decode", "feature", "model_wait",
                                                                    "encode", "produce", "ack", "commit"}
    assert "worker, end to end" in proc.stdout
