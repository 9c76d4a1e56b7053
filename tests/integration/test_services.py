"""`neuropredict up / status / down` with the real embedded broker."""

import subprocess
import sys

import pytest

from neuropredict import procs
from tests.conftest import TINY_PARAMS, project_env, write_params


def _cli(root, env, *args):
    return subprocess.run([sys.executable, "-m", "neuropredict.cli", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def project(tmp_path):
    write_params(tmp_path, TINY_PARAMS)
    env = {**project_env(tmp_path), "NEUROPREDICT_KAFKA_PORT": str(procs.free_port())}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    yield tmp_path, env
    _cli(tmp_path, env, "down")


def test_up_status_down_manage_exactly_the_embedded_broker(project):
    root, env = project
    port = env["NEUROPREDICT_KAFKA_PORT"]
    up = _cli(root, env, "up", "--no-ui", "--guard")
    assert up.returncode == 0, up.stderr
    assert f"127.0.0.1:{port}" in up.stdout and "guard " in up.stdout
    assert "stock_prices (4 partitions)" in up.stdout and "stock_prices_dlq (4 partitions)" in up.stdout
    status = _cli(root, env, "status")
    assert "reachable" in status.stdout and "NOT reachable" not in status.stdout
    assert "topic      predicted_prices (4 partitions" in status.stdout
    assert "none (run dvc repro)" in status.stdout, status.stderr
    again = _cli(root, env, "up", "--no-ui")  # idempotent: the running broker is reused
    assert again.returncode == 0 and again.stdout.count("pid") == up.stdout.count("pid")
    down = _cli(root, env, "down")
    assert "stopped: guard, kafka" in down.stdout
    assert not procs.port_open("127.0.0.1", int(port))
    assert "NOT reachable" in _cli(root, env, "status").stdout


def test_a_taken_port_is_a_clear_error(project):
    root, env = project
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", int(env["NEUROPREDICT_KAFKA_PORT"])))
        s.listen()
        up = _cli(root, env, "up", "--no-ui")
    assert up.returncode == 1 and "Traceback" not in up.stderr
    assert "is already in use" in up.stderr and "NEUROPREDICT_KAFKA_PORT" in up.stderr


def test_external_cluster_means_no_embedded_broker(project, stream):
    root, env = project
    broker = stream.bootstrap
    env = {**env, **stream.env()}
    up = _cli(root, env, "up", "--no-ui")
    assert up.returncode == 0, up.stderr
    assert "kafka " not in up.stdout.splitlines()[0]  # nothing started
    assert f"Kafka bootstrap: {broker}" in up.stdout
    assert "external cluster" in _cli(root, env, "status").stdout
