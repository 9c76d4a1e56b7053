"""What the environment says: endpoints (Kafka, MLflow, ports), the topic prefix, a worker's
name, where Apache Kafka comes from; and the quiet, offline-safe defaults for the libraries."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from neuropredict.errors import ConfigError
from neuropredict.settings.contracts import TOPIC_PREFIX_ENV, Topics
from neuropredict.settings.paths import Paths, paths

DEFAULT_MLFLOW_UI_PORT = 5000
DEFAULT_KAFKA_PORT = 9092
DEFAULT_POSTGRES_PORT = 5432
DEFAULT_PROMETHEUS_PORT = 9090
DEFAULT_VIEW_PORT = 8050

# Quiet, offline-safe libraries (values already set are kept).
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",  # no installation id, no lookups of telemetry hosts
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "False",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "TF_ENABLE_ONEDNN_OPTS": "0",  # with level 3: TensorFlow's import prints nothing
}


# Each may instead be given as a file, VAR_FILE (compose's secrets under /run/secrets): then the value
# is on no command line and in no `docker inspect`.
FILE_SECRETS = ("MLFLOW_TRACKING_PASSWORD",)


def secrets_from_files(env: dict[str, str] | None = None) -> None:
    """VAR from the file VAR_FILE names, for each of FILE_SECRETS not set already. Called on import
    of the package, before MLflow reads its environment."""
    env = os.environ if env is None else env
    for name in FILE_SECRETS:
        path = env.get(f"{name}_FILE")
        if path and not env.get(name):
            try:
                env[name] = Path(path).read_text().strip()
            except OSError as exc:  # on import, before any error boundary: one line, and MLflow says 401 later
                sys.stderr.write(f"warning: {name}_FILE={path} cannot be read ({exc.strerror}): point it at the "
                                 f"secret's file, or set {name} instead\n")


def quiet_environment(env: dict[str, str] | None = None) -> None:
    """Apply QUIET_ENV (to os.environ by default). Called before TensorFlow or MLflow is imported."""
    env = os.environ if env is None else env
    for key, value in QUIET_ENV.items():
        env.setdefault(key, value)


# ---- MLflow ----


def sqlite_uri(root: Path) -> str:
    """The embedded MLflow store of a project folder."""
    return f"sqlite:///{Paths(Path(root)).mlruns_dir / 'mlflow.db'}"


def tracking_uri(root: Path | None = None) -> str:
    """$MLFLOW_TRACKING_URI, else the embedded sqlite store under mlruns/ (absolute path)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or sqlite_uri(paths(root).root)


def redacted(uri: str) -> str:
    """A URI fit to print: any user:password@ left out."""
    return re.sub(r"//[^@/]*@", "//", uri)


def artifact_root(root: Path | None = None) -> str:
    """Where new experiments keep artifacts: $NEUROPREDICT_ARTIFACT_ROOT, else mlruns/artifacts."""
    return os.environ.get("NEUROPREDICT_ARTIFACT_ROOT") or (paths(root).mlruns_dir / "artifacts").as_uri()


# ---- ports ----


def _port(variable: str, default: int) -> int:
    text = os.environ.get(variable, str(default))
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"{variable}={text!r} is not a port number (1..65535)")
    return int(text)


def embedded_kafka_port() -> int:
    return _port("NEUROPREDICT_KAFKA_PORT", DEFAULT_KAFKA_PORT)


def mlflow_ui_port() -> int:
    """The MLflow UI's port, and the tracking server's (it serves the UI too)."""
    return _port("NEUROPREDICT_UI_PORT", DEFAULT_MLFLOW_UI_PORT)


def postgres_port() -> int:
    return _port("NEUROPREDICT_PG_PORT", DEFAULT_POSTGRES_PORT)


def metrics_port(configured: int) -> int:
    """A worker's Prometheus port: $NEUROPREDICT_METRICS_PORT, else params' serving.metrics_port (0: none)."""
    text = os.environ.get("NEUROPREDICT_METRICS_PORT")
    return configured if text is None else 0 if text == "0" else _port("NEUROPREDICT_METRICS_PORT", configured)


def metrics_address() -> str:
    """Where a worker's endpoint listens: $NEUROPREDICT_METRICS_ADDRESS (a container's: 0.0.0.0), else 127.0.0.1."""
    return os.environ.get("NEUROPREDICT_METRICS_ADDRESS") or "127.0.0.1"


def prometheus_port() -> int:
    return _port("NEUROPREDICT_PROMETHEUS_PORT", DEFAULT_PROMETHEUS_PORT)


def view_port() -> int:
    """`neuropredict view`'s page."""
    return _port("NEUROPREDICT_VIEW_PORT", DEFAULT_VIEW_PORT)


# ---- Kafka ----


def kafka_bootstrap() -> str:
    """$KAFKA_BOOTSTRAP_SERVERS (a real cluster), else the local broker(s) `neuropredict up`
    started (every node of a local cluster), else the embedded broker's port on 127.0.0.1."""
    return (os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or _local_bootstrap()
            or f"127.0.0.1:{embedded_kafka_port()}")


def _local_bootstrap() -> str | None:
    from neuropredict import procs  # here: the pipeline's stages never need it

    started = procs.load_table(paths().services_file)
    return ",".join(svc.url for name, svc in sorted(started.items()) if name.startswith("kafka")) or None


def kafka_is_external() -> bool:
    """True when the user points us at their own cluster: then nothing embedded is started."""
    return bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))


def topics(configured_prefix: str = "") -> Topics:
    """The topics and group to use: $NEUROPREDICT_TOPIC_PREFIX, else the configured prefix
    (params: kafka.topic_prefix), before each default name."""
    return Topics(os.environ.get(TOPIC_PREFIX_ENV, configured_prefix))


def worker_id() -> str | None:
    """$NEUROPREDICT_WORKER_ID: a serving worker's stable name (e.g. a replica's index), if set."""
    return os.environ.get("NEUROPREDICT_WORKER_ID") or None


def worker_status_file() -> Path | None:
    """$NEUROPREDICT_WORKER_STATUS: a file where a worker keeps its phase and partitions (its supervisor reads it)."""
    path = os.environ.get("NEUROPREDICT_WORKER_STATUS")
    return Path(path) if path else None


def kafka_libs_dir() -> Path | None:
    """$NEUROPREDICT_KAFKA_LIBS: where fetched Apache Kafka jars go (default: this checkout's
    serving/apache-kafka/libs); one folder can serve several checkouts."""
    folder = os.environ.get("NEUROPREDICT_KAFKA_LIBS")
    return Path(folder).expanduser() if folder else None


def kafka_home() -> Path | None:
    """$KAFKA_HOME: an Apache Kafka distribution of the user's own (else one is fetched with Maven)."""
    home = os.environ.get("KAFKA_HOME")
    return Path(home).expanduser() if home else None
