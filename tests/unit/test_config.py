import subprocess
import sys

import pytest
from pydantic import ValidationError

from neuropredict.errors import ConfigError
from neuropredict.settings import environment
from neuropredict.settings.contracts import TOPIC_PREFIX_ENV, Topics
from neuropredict.settings.schema import load_params, params_from_dict
from tests.conftest import REPO, TINY_PARAMS, project_env, write_params


def test_repo_params_load_into_typed_frozen_object():
    params = load_params(REPO / "params.yaml")
    assert params.featurize.window >= 3
    assert params.data.symbols and all(isinstance(s, str) for s in params.data.symbols)
    assert params.tune.cells == ("lstm", "gru")
    with pytest.raises(ValidationError, match="frozen"):
        params.featurize.window = 5  # frozen


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p["data"].update(symbol=["AAPL"]), "unknown key 'data.symbol'"),
        (lambda p: p["featurize"].update(window="ten"), "'featurize.window' must be an integer"),
        (lambda p: p["featurize"].update(window=1), "'featurize.window' is 1; allowed range: 3 .. 2000"),
        (lambda p: p["data"].update(interval="5m"), "'data.interval' is '5m'; allowed: 1d, 1m"),
        (lambda p: p["tune"].update(dropout=[0.5, 0.1]), "'tune.dropout' must be [min, max] with min <= max"),
        (lambda p: p["tune"].update(cells=["lstm", "rnn"]), "'tune.cells[1]' is 'rnn'; allowed: lstm, gru"),
        (lambda p: p["featurize"].pop("test_sessions"), "missing key 'featurize.test_sessions'"),
        (lambda p: p["featurize"].update(test_sessions=0), "'featurize.test_sessions' is 0; allowed range: 1 .."),
        (lambda p: p["data"].update(end="2021-06-01"), "'data.start' (2022-01-01) must be before 'data.end'"),
        (lambda p: p["data"].update(end="not a date"), "'data.end' is 'not a date'; expected a date like 2024-01-01 or 'latest'"),
        (lambda p: p["serving"].update(max_poll_records=True), "'serving.max_poll_records' must be an integer"),
    ],
)
def test_bad_params_name_the_key_and_what_is_allowed(tiny_params, mutate, message):
    mutate(tiny_params)
    with pytest.raises(ConfigError) as err:
        params_from_dict(tiny_params)
    assert message in str(err.value)


def test_cli_reports_bad_params_in_one_line_without_traceback(tmp_path, tiny_params):
    tiny_params["featurize"]["window"] = -4
    write_params(tmp_path, tiny_params)
    proc = subprocess.run([sys.executable, "-m", "neuropredict.cli", "models"], cwd=tmp_path,
                          env=project_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: 'featurize.window' is -4; allowed range: 3 .. 2000"


def test_stage_script_reports_bad_params_without_traceback(tmp_path, tiny_params):
    tiny_params["validate"]["max_gap_days"] = "five"
    write_params(tmp_path, tiny_params)
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / "validate.py")], cwd=tmp_path,
                          env=project_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "'validate.max_gap_days' must be a number" in proc.stderr


def test_tiny_params_are_valid():
    assert params_from_dict(TINY_PARAMS).data.symbols == ("AAPL", "MSFT")


@pytest.mark.parametrize("args, message", [
    (["produce", "--start", "yesterday"], "'yesterday' is not a date like 2024-01-31"),
    (["evaluate", "--end", "2024-13-45"], "'2024-13-45' is not a date like 2024-01-31"),
])
def test_cli_rejects_bad_dates_before_doing_anything(tmp_path, args, message):
    write_params(tmp_path, TINY_PARAMS)
    proc = subprocess.run([sys.executable, "-m", "neuropredict.cli", *args], cwd=tmp_path,
                          env=project_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_a_bad_port_variable_is_a_config_error(tmp_path):
    write_params(tmp_path, TINY_PARAMS)
    env = {**project_env(tmp_path), "NEUROPREDICT_KAFKA_PORT": "abc"}
    proc = subprocess.run([sys.executable, "-m", "neuropredict.cli", "status"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "NEUROPREDICT_KAFKA_PORT='abc' is not a port number" in proc.stderr


def test_topics_are_the_contract_names_and_a_prefix_makes_another_set():
    default = Topics()
    assert default.all == ("stock_prices", "predicted_prices", "stock_prices_dlq", "predicted_prices_shadow",
                           "serving_state")
    assert default.group == "neuropredict-serving"
    staging = Topics("staging.")
    assert staging.all == ("staging.stock_prices", "staging.predicted_prices", "staging.stock_prices_dlq",
                           "staging.predicted_prices_shadow", "staging.serving_state")
    assert staging.group == "staging.neuropredict-serving"
    with pytest.raises(ConfigError, match="not usable in Kafka topic names"):
        Topics("a b")


def test_the_environment_prefix_wins_over_params(monkeypatch, tiny_params):
    tiny_params["kafka"]["topic_prefix"] = "from-params."
    params = params_from_dict(tiny_params)
    monkeypatch.delenv(TOPIC_PREFIX_ENV, raising=False)
    assert environment.topics(params.kafka.topic_prefix).prices == "from-params.stock_prices"
    monkeypatch.setenv(TOPIC_PREFIX_ENV, "ci-7.")
    assert environment.topics(params.kafka.topic_prefix).group == "ci-7.neuropredict-serving"
    tiny_params["kafka"]["topic_prefix"] = "no spaces"
    with pytest.raises(ConfigError, match="'kafka.topic_prefix' is 'no spaces'"):
        params_from_dict(tiny_params)


def test_a_store_another_process_is_creating_is_retried_not_a_traceback():
    """`up --guard` and `status` opening a fresh SQLite store at once: MLflow's migration in the
    other process shows as `_alembic_tmp_... already exists`; it is retried like a locked store."""
    import sqlite3

    from neuropredict import tracking

    calls = []

    def opening():
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("table _alembic_tmp_model_version_tags already exists")
        return "opened"

    assert tracking.with_retry(opening, first_delay_s=0.01) == "opened" and len(calls) == 3
    with pytest.raises(sqlite3.OperationalError, match="no such column"):
        tracking.with_retry(lambda: (_ for _ in ()).throw(sqlite3.OperationalError("no such column: x")))
