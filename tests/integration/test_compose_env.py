"""What serving/compose.yaml gives a worker, done here without Docker: Kafka through
KAFKA_BOOTSTRAP_SERVERS and the registry through an MLflow *server* over HTTP."""

import subprocess
import sys

import pytest
import yaml

from neuropredict import producer, services
from neuropredict.config import load_params
from tests.conftest import REPO, copy_project, project_env
from tests.integration.kafka_helpers import predictions

pytestmark = pytest.mark.slow


def test_worker_entry_point_serves_with_the_compose_environment(trained_project, tmp_path, broker, use_project):
    compose = yaml.safe_load((REPO / "serving" / "compose.yaml").read_text())
    worker_env = compose["services"]["worker"]["environment"]
    assert {"KAFKA_BOOTSTRAP_SERVERS", "MLFLOW_TRACKING_URI"} <= set(worker_env)

    root = use_project(copy_project(trained_project, tmp_path / "copy"))
    local = project_env(root)
    ui_port = services.free_port()
    cmd, env = services.mlflow_ui_command(ui_port)
    server = subprocess.Popen(cmd, env={**env, **local}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        import time

        deadline = time.monotonic() + 90
        while not services._http_ok(f"http://127.0.0.1:{ui_port}/health"):
            assert time.monotonic() < deadline and server.poll() is None, "MLflow server did not start"
            time.sleep(0.5)
        params = load_params(root / "params.yaml")
        frames, _ = producer.replay_frames(params.data.symbols, "1d", root / "data/raw", root / "data/snapshot")
        ticks = producer.replay_ticks(frames, "1d", params.featurize.test_start, params.data.end, params.featurize.window)
        producer.publish(ticks, bootstrap=broker, serving=params.serving)

        env = {**local, "KAFKA_BOOTSTRAP_SERVERS": broker, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ui_port}"}
        proc = subprocess.run([sys.executable, str(REPO / "serving" / "worker.py"), "--wait",
                               "--max-messages", str(len(ticks))], cwd=root, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"Kafka {broker}" in proc.stderr
        assert f"stock-price-forecaster v1 (window {params.featurize.window})" in proc.stderr
        outs = predictions(broker)
        assert len(outs) == len(ticks) - len(frames) * (params.featurize.window - 1)
        assert {o["model_version"] for o in outs} == {"1"}
    finally:
        services.stop_process(server.pid)
