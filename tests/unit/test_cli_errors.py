"""Bad input to the CLI is one line naming the problem and the fix, never a traceback."""

import subprocess
import sys

import pytest

from neuropredict.procs import free_port
from tests.conftest import REPO, TINY_PARAMS, project_env, write_params


@pytest.mark.parametrize("variable, verb", [
    ("NEUROPREDICT_UI_PORT", ["ui"]),
    ("NEUROPREDICT_KAFKA_PORT", ["status"]),
    ("NEUROPREDICT_KAFKA_PORT", ["up", "--no-ui"]),
    ("NEUROPREDICT_KAFKA_PORT", ["serve"]),
])
def test_a_bad_environment_variable_is_one_line_not_a_traceback(tmp_path, variable, verb):
    write_params(tmp_path, TINY_PARAMS)
    env = {**project_env(tmp_path), variable: "abc"}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    proc = subprocess.run([sys.executable, "-m", "neuropredict.cli", *verb], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {variable}='abc' is not a port number (1..65535)"]


@pytest.mark.parametrize("missing, fix", [("java", "install a JDK"), ("mvn", "install it")])
def test_apache_kafka_without_java_or_maven_is_one_line_naming_the_fix(tmp_path, missing, fix):
    """No Java (or, before the first fetch, no Maven): one line, and nothing started."""
    import os
    import shutil

    write_params(tmp_path, TINY_PARAMS)
    tools = tmp_path / "bin"  # a PATH with everything but the missing tool
    tools.mkdir()
    for name in ("java", "mvn"):
        if name != missing and shutil.which(name):
            os.symlink(shutil.which(name), tools / name)
    env = {**project_env(tmp_path), "PATH": str(tools), "KAFKA_HOME": ""}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    if missing == "mvn":
        env["NEUROPREDICT_KAFKA_LIBS"] = str(tmp_path / "no-kafka-here")  # as before the first fetch
    proc = subprocess.run([sys.executable, "-m", "neuropredict.cli", "up", "--broker", "apache", "--no-ui"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and f"`{missing}` is not on PATH" in lines[0] and fix in lines[0]
    assert not (tmp_path / ".neuropredict" / "services.json").exists() or "kafka" not in (
        tmp_path / ".neuropredict" / "services.json").read_text()


def test_kafka_home_is_used_as_it_is_and_a_wrong_one_is_one_line(tmp_path, monkeypatch):
    """A distribution of the user's own (KAFKA_HOME) is used and nothing is fetched; a folder that
    holds none is named in one line."""
    from neuropredict import apache_kafka
    from neuropredict.errors import ServiceError

    home = tmp_path / "kafka_2.13-4.1.1"
    (home / "libs").mkdir(parents=True)
    (home / "libs" / "kafka_2.13-4.1.1.jar").write_bytes(b"")
    monkeypatch.setenv("KAFKA_HOME", str(home))
    monkeypatch.setattr(apache_kafka, "fetch", lambda folder: pytest.fail("fetched despite KAFKA_HOME"))
    assert apache_kafka.libs() == home / "libs"
    monkeypatch.setenv("KAFKA_HOME", str(tmp_path))
    with pytest.raises(ServiceError, match=r"KAFKA_HOME=.* holds no Kafka distribution"):
        apache_kafka.libs()


def _project_with_snapshot(tmp_path):
    write_params(tmp_path, TINY_PARAMS)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "snapshot").symlink_to(REPO / "data" / "snapshot")
    env = {**project_env(tmp_path), "NEUROPREDICT_KAFKA_PORT": str(free_port())}  # no broker there
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    return env


def _cli(tmp_path, env, *args, shell=False):
    cmd = args[0] if shell else [sys.executable, "-m", "neuropredict.cli", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, shell=shell,
                          executable="/bin/bash" if shell else None)


@pytest.mark.parametrize("args, message", [
    (["produce", "--rate", "-5"], "argument --rate: '-5' is not a number of at least 0"),
    (["produce", "--limit", "0"], "argument --limit: '0' is not a whole number of at least 1"),
    (["serve", "--idle-timeout-s", "-1"], "argument --idle-timeout-s: '-1' is not a positive number of seconds"),
])
def test_bad_numbers_are_refused_before_kafka_is_contacted(tmp_path, args, message):
    env = _project_with_snapshot(tmp_path)
    proc = _cli(tmp_path, env, *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert "kafka" not in proc.stderr.lower()  # refused at once, nothing was contacted


def test_no_broker_is_one_line_without_the_clients_own_log_lines(tmp_path):
    env = _project_with_snapshot(tmp_path)
    proc = _cli(tmp_path, env, "produce", "--limit", "3", "--lead", "0")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: cannot reach Kafka at 127.0.0.1:{env['NEUROPREDICT_KAFKA_PORT']} (KafkaTimeoutError): "
        f"start the embedded broker with `neuropredict up`"]


def test_status_into_a_pipe_closed_early_ends_quietly(tmp_path):
    env = _project_with_snapshot(tmp_path)
    proc = _cli(tmp_path, env, f"set -o pipefail; {sys.executable} -m neuropredict.cli status | head -1", shell=True)
    assert proc.returncode == 0 and proc.stdout.startswith("Kafka ") and len(proc.stdout.splitlines()) == 1
    assert proc.stderr == ""


@pytest.mark.parametrize("args, message", [
    (["demo", "--workers", "3", "--interval", "1m"], "demo --workers runs compose's topology"),
    (["demo", "--workers", "3", "--broker", "tansu"], "demo --workers runs compose's topology"),
    (["up", "--workers", "2"], "--workers starts compose's workers, which log to the tracking server: add --tracking server"),
    (["promote", "3", "--rollback"], "--rollback returns to the previous production: give no VERSION with it"),
    (["promote"], "which version? `neuropredict promote VERSION`"),
    (["compare", "4"], "compare takes two versions"),
    (["demo", "--variant", "regime-1929"], "no variant 'regime-1929': params-regime-1929.yaml does not exist"),
    (["demo", "--interval", "1m", "--variant", "regime-2020"], "--interval 1m is the intraday variant"),
])
def test_options_that_cannot_go_together_are_one_line(tmp_path, args, message):
    env = _project_with_snapshot(tmp_path)
    proc = _cli(tmp_path, env, *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and message in lines[0], proc.stderr
