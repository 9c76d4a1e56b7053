"""A smoke run of bench/serving.py on the tiny trained project: it runs and writes its report."""

import json

import pytest

from tests.conftest import bench_smoke, require_apache_kafka

pytestmark = pytest.mark.slow


def test_serving_benchmark_smoke_run_writes_its_report(trained_project, tmp_path):
    require_apache_kafka()
    out = tmp_path / "serving.json"
    proc = bench_smoke("serving.py", trained_project, out, timeout=600)
    report = json.loads(out.read_text())
    for key in ("throughput_ticks_per_s", "seed_loop_ticks_per_s", "speedup", "model_ceiling_windows_per_s"):
        assert report[key] > 0, key
    runs = report["runs"]  # both brokers, and exactly-once where the broker isolates transactions
    assert {label: run["guarantee"] for label, run in runs.items()} == {
        "tansu/at_least_once": "at_least_once", "apache/at_least_once": "at_least_once",
        "apache/exactly_once": "exactly_once"}
    assert set(report["ratios"]) == {"apache_at_least_once_of_model_ceiling", "exactly_once_of_at_least_once_throughput",
                                     "exactly_once_over_at_least_once_p99", "one_shadow_of_none_throughput",
                                     "one_shadow_over_none_p99", "endpoint_on_of_off_throughput",
                                     "endpoint_on_over_off_p99", "exactly_once_over_at_least_once_visible_p99",
                                     "tansu_at_least_once_of_client_ceiling", "apache_at_least_once_of_client_ceiling",
                                     "apache_exactly_once_of_client_ceiling"}
    for label, run in runs.items():  # the bare loop read the whole backlog, before and after the worker
        assert [r["consumed"] for r in run["client_ceiling_rounds"]] == [run["throughput_phase"]["ticks"]] * 2, label
        assert run["of_client_ceiling"] == run["throughput_ticks_per_s"] / run["client_ceiling_ticks_per_s"] > 0
        sent, seen = run["latency_ms"], run["visible_latency_ms"]  # a reader sees a forecast after it was sent
        assert seen["n"] == sent["n"] > 0 and seen["p50"] >= sent["p50"], label
    shadow = report["shadow_phase"]["rounds"]  # the shadow scored the same backlog; none without one
    assert shadow["one"][0]["shadow_scored"] > 0 and shadow["none"][0]["shadow_scored"] == 0
    endpoint = report["endpoint_phase"]["rounds"]  # scraped while it ran; never without an endpoint
    assert endpoint["on"][0]["scrape_ms"] and not endpoint["off"][0]["scrape_ms"]
    latency = report["latency_ms"]
    assert latency["offered_ticks_per_s"] > 0 and latency["n"] > 0
    assert 0 <= latency["p50"] <= latency["p95"] <= latency["p99"]
    assert set(report["throughput_phase"]["breakdown_seconds"]) >= {"poll", "decode", "feature", "model_wait",
                                                                    "encode", "produce", "ack", "commit"}
    for label, run in runs.items():  # where the CPU went: the loop's thread, and the whole process's
        phase = run["throughput_phase"]
        assert phase["thread_cpu_seconds"]["worker-loop"] > 0 and phase["process_cpu_seconds"] > 0, label
        assert all(r["process_cpu_seconds"] > 0 for r in run["client_ceiling_rounds"]), label
    # whether the served intervals move online says what the `intervals` step holds
    assert report["model"]["online_intervals"] in (True, False)
    assert report["throughput_phase"]["breakdown_seconds"]["intervals"] >= 0
    assert "model ceiling (model call alone)" in proc.stdout and "apache/exactly_once" in proc.stdout
