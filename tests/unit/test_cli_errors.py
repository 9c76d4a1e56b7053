"""Bad input to the CLI is one line naming the problem and the fix, never a traceback."""

import subprocess
import sys

import pytest

from tests.conftest import TINY_PARAMS, project_env, write_params


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
