"""bench/pipeline.py --smoke runs end to end and writes a complete report (no timing thresholds)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = ("download", "validate", "featurize", "tune", "registry", "register")


@pytest.mark.slow
def test_smoke_benchmark_writes_a_complete_report(tmp_path):
    out = tmp_path / "p.json"
    proc = subprocess.run([sys.executable, "bench/pipeline.py", "--smoke", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    report = json.loads(out.read_text())

    assert set(report["stage_seconds"]) == set(STAGES)
    assert all(s > 0 for s in report["stage_seconds"].values())
    assert report["repro_total_s"] > 0
    assert report["noop_repro_s"] > 0
    assert len(report["noop_repro_samples"]) == 3 and all(s > 0 for s in report["noop_repro_samples"])
    assert report["noop_repro_ran_a_stage"] is False
    for path in ("predict_next", "model.predict"):
        rates = report["windows_per_s"][path]
        assert set(rates) == {"1", "64"} and all(r > 0 for r in rates.values())
    assert report["params"] == "smoke"
    assert report["machine"]["cpu_count"] > 0 and report["machine"]["python"]
    assert "bench/pipeline.py" in report["command"] and "--smoke" in report["command"]
    assert report["date"]
    assert "predict_next" in proc.stdout and "no-op repro" in proc.stdout
