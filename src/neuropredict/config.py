"""The one home of configuration: typed params from params.yaml, paths, endpoints and names.

`load_params()` is the only reader of params.yaml. It returns a frozen `Params` whose fields
mirror the YAML; an unknown, missing or mistyped key raises `ConfigError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from neuropredict.errors import ConfigError

# ---- contracts shared with users, scripts and tests (ARCHITECTURE.md) ----
PRICES_TOPIC = "stock_prices"
PREDICTIONS_TOPIC = "predicted_prices"
DLQ_TOPIC = "stock_prices_dlq"
TOPICS = (PRICES_TOPIC, PREDICTIONS_TOPIC, DLQ_TOPIC)
CONSUMER_GROUP = "neuropredict-serving"
PRODUCTION_ALIAS = "production"
CHALLENGER_ALIAS = "challenger"
EXPERIMENT_NAME = "neuropredict"
SERVING_EXPERIMENT_NAME = "neuropredict-serving"
DEFAULT_MLFLOW_UI_PORT = 5000
DEFAULT_KAFKA_PORT = 9092
DEFAULT_POSTGRES_PORT = 5432
EXCHANGE_TZ = "America/New_York"  # naive timestamps are this exchange's local time

# ---- named constants: fixed by the brokers and libraries we run on, not knobs to tune ----
# Session 6000 / heartbeat 2000: the smallest a default Apache Kafka accepts. The embedded broker
# holds a group join until half the session timeout has passed: ~3 s here, ~23 s with the defaults.
KAFKA_SESSION_TIMEOUT_MS = 6000
KAFKA_HEARTBEAT_INTERVAL_MS = 2000
KAFKA_MAX_POLL_INTERVAL_MS = 300_000  # a batch (model call included) must finish well within this
KAFKA_BOOTSTRAP_TIMEOUT_MS = 10_000   # how long a client waits for the first broker answer
KAFKA_CONSUMER_REQUEST_TIMEOUT_MS = 30_000
KAFKA_PRODUCER_REQUEST_TIMEOUT_MS = 10_000  # capped by serving.delivery_timeout_ms
# A worker that dies mid-transaction leaves it open; the broker aborts it after this. Until then
# read_committed readers of its partitions wait, and so does the worker taking them over (unless
# it has the same NEUROPREDICT_WORKER_ID, which aborts it at once). A batch must fit well within.
KAFKA_TRANSACTION_TIMEOUT_MS = 10_000
# kafka-python refuses records over its 1 MiB max_request_size, and Apache Kafka's default
# message.max.bytes is ~1 MB: a dead letter keeps at most this much of an oversized original.
DEAD_LETTER_MAX_BYTES = 512 * 1024
READ_RANGE_TIMEOUT_S = 30.0  # reading a partition back (restore, evaluate) gives up after this
# A batch's model call is cut into at most MODEL_CHUNKS_MAX chunks of at least MODEL_CHUNK_MIN_ROWS
# rows, so publishing one chunk overlaps the call of the next (smaller chunks cost more calls).
MODEL_CHUNKS_MAX = 8
MODEL_CHUNK_MIN_ROWS = 256
HYPERBAND_FACTOR = 3  # keras-tuner's default reduction factor between Hyperband brackets

# ---- environment defaults: quiet, offline-safe libraries (values already set are kept) ----
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


def quiet_environment(env: dict[str, str] | None = None) -> None:
    """Apply QUIET_ENV (to os.environ by default). Called before TensorFlow or MLflow is imported."""
    env = os.environ if env is None else env
    for key, value in QUIET_ENV.items():
        env.setdefault(key, value)


def _range(lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"min": lo, "max": hi}


@dataclass(frozen=True)
class DataParams:
    symbols: tuple[str, ...]
    start: str
    end: str
    interval: Literal["1d", "1m"] = "1d"
    source: Literal["auto", "yfinance", "snapshot"] = "auto"
    download_timeout_s: float = field(default=20.0, metadata=_range(0.1, 600))

    @property
    def intraday(self) -> bool:
        return self.interval != "1d"


@dataclass(frozen=True)
class ValidateParams:
    max_gap_days: float = field(default=5.0, metadata=_range(0.0, None))
    max_abs_log_return: float = field(default=0.4, metadata=_range(0.0, None))


@dataclass(frozen=True)
class FeaturizeParams:
    window: int = field(metadata=_range(3, 2000))
    validation_start: str
    test_start: str
    price_column: Literal["Close", "Open", "High", "Low"] = "Close"


@dataclass(frozen=True)
class TuneParams:
    tuner: Literal["random", "bayesian", "hyperband"] = "bayesian"
    cells: tuple[Literal["lstm", "gru"], ...] = ("lstm", "gru")
    trials_per_cell: int = field(default=4, metadata=_range(1, 500))
    max_epochs: int = field(default=20, metadata=_range(1, 1000))
    patience: int = field(default=3, metadata=_range(1, 1000))
    batch_size: int = field(default=64, metadata=_range(1, 65536))
    units: tuple[int, ...] = (16, 32, 64)
    layers: tuple[int, ...] = (1, 2)
    dropout: tuple[float, float] = (0.0, 0.3)
    learning_rate: tuple[float, float] = (3e-4, 3e-3)
    parsimony_tolerance: float = field(default=0.002, metadata=_range(0.0, 1.0))


@dataclass(frozen=True)
class IntervalParams:
    levels: tuple[float, ...] = (0.8, 0.95)
    ewma_lambda: float = field(default=0.94, metadata=_range(0.0, 0.9999))
    min_coverage_p: float = field(default=0.01, metadata=_range(0.0, 1.0))


@dataclass(frozen=True)
class RegisterParams:
    model_name: str = "stock-price-forecaster"
    max_dm_t: float = 2.0
    min_mean_skill: float = -0.005


@dataclass(frozen=True)
class KafkaParams:
    partitions: int = field(default=4, metadata=_range(1, 1000))
    replication_factor: int = field(default=1, metadata=_range(1, 10))


@dataclass(frozen=True)
class ServingParams:
    max_poll_records: int = field(default=5000, metadata=_range(1, 1_000_000))
    poll_timeout_ms: int = field(default=100, metadata=_range(0, 60_000))
    fetch_max_wait_ms: int = field(default=10, metadata=_range(0, 60_000))
    alias_poll_interval_s: float = field(default=5.0, metadata=_range(0.1, 3600))
    metrics_interval_s: float = field(default=10.0, metadata=_range(0.1, 3600))
    producer_linger_ms: int = field(default=5, metadata=_range(0, 10_000))
    producer_batch_bytes: int = field(default=262144, metadata=_range(1024, 16 * 1024 * 1024))
    compression: Literal["none", "gzip", "lz4"] = "lz4"
    model_threads: int = field(default=1, metadata=_range(0, 256))
    restore_lookback_max: int = field(default=100_000, metadata=_range(0, 100_000_000))
    delivery_timeout_ms: int = field(default=30_000, metadata=_range(1000, 3_600_000))
    level_shift_ticks: int = field(default=5, metadata=_range(2, 10_000))  # 1: every spike a new level
    guarantee: Literal["exactly_once", "at_least_once"] = "exactly_once"


@dataclass(frozen=True)
class Params:
    seed: int
    data: DataParams
    validate: ValidateParams
    featurize: FeaturizeParams
    tune: TuneParams
    register: RegisterParams
    kafka: KafkaParams
    serving: ServingParams
    intervals: IntervalParams = field(default_factory=IntervalParams)


# ---- paths and endpoints ----


def project_root() -> Path:
    """The folder holding params.yaml: $NEUROPREDICT_ROOT, else the nearest one above the cwd."""
    env = os.environ.get("NEUROPREDICT_ROOT")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    return here


@dataclass(frozen=True)
class Paths:
    """Every file location the product uses, relative to one project root."""

    root: Path

    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    @property
    def intraday_params_file(self) -> Path:
        """The keys of the intraday (1-minute) model that differ from params.yaml."""
        return self.root / "params-intraday.yaml"

    @property
    def intraday_dir(self) -> Path:
        """The intraday demo's workspace: a project copy with its own outputs and MLflow store."""
        return self.state_dir / "intraday"

    @property
    def snapshot_dir(self) -> Path:
        return self.root / "data" / "snapshot"

    @property
    def raw_dir(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def features_dir(self) -> Path:
        return self.root / "data" / "features"

    @property
    def model_dir(self) -> Path:
        return self.root / "models" / "tuned"

    @property
    def best_model_dir(self) -> Path:
        """The tuned model the register stage ships (a copy of the winning cell's folder)."""
        return self.model_dir / "best"

    @property
    def selection_file(self) -> Path:
        return self.best_model_dir / "selection.json"

    @property
    def tuner_dir(self) -> Path:
        return self.root / "models" / "tuner"

    @property
    def validation_dir(self) -> Path:
        return self.root / "reports" / "validation"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    @property
    def mlruns_dir(self) -> Path:
        return self.root / "mlruns"

    @property
    def state_dir(self) -> Path:
        """PIDs and logs of the embedded services that `neuropredict up` started."""
        return self.root / ".neuropredict"

    @property
    def services_file(self) -> Path:
        """What `neuropredict up` started: name, PID, address and log of each process."""
        return self.state_dir / "services.json"

    def apache_kafka_dir(self, nodes: int) -> Path:
        """A local Apache Kafka cluster's config and data (topics, committed offsets): kept by `down`."""
        return self.state_dir / f"apache-kafka-{nodes}"

    @property
    def tracking_server_dir(self) -> Path:
        """The team tracking server's PostgreSQL cluster, artifacts and secrets (0600): kept by `down`."""
        return self.state_dir / "tracking-server"


def paths(root: Path | None = None) -> Paths:
    return Paths(root or project_root())


def sqlite_uri(root: Path) -> str:
    """The embedded MLflow store of a project folder."""
    return f"sqlite:///{Paths(Path(root)).mlruns_dir / 'mlflow.db'}"


def tracking_uri(root: Path | None = None) -> str:
    """$MLFLOW_TRACKING_URI, else the embedded sqlite store under mlruns/ (absolute path)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or sqlite_uri(paths(root).root)


def artifact_root(root: Path | None = None) -> str:
    """Where new experiments keep artifacts: $NEUROPREDICT_ARTIFACT_ROOT, else mlruns/artifacts."""
    env = os.environ.get("NEUROPREDICT_ARTIFACT_ROOT")
    if env:
        return env
    return (paths(root).mlruns_dir / "artifacts").as_uri()


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


def kafka_bootstrap() -> str:
    """$KAFKA_BOOTSTRAP_SERVERS (a real cluster), else the local broker(s) `neuropredict up` started
    (every node of a local cluster), else the embedded broker's port on 127.0.0.1."""
    return (os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or _local_bootstrap()
            or f"127.0.0.1:{embedded_kafka_port()}")


def _local_bootstrap() -> str | None:
    import json

    try:
        started = json.loads(paths().services_file.read_text())
    except (OSError, ValueError):
        return None
    urls = [svc["url"] for name, svc in sorted(started.items()) if name.startswith("kafka")]
    return ",".join(urls) or None


def worker_id() -> str | None:
    """$NEUROPREDICT_WORKER_ID: a serving worker's stable name (e.g. a replica's index), if set."""
    return os.environ.get("NEUROPREDICT_WORKER_ID") or None


def kafka_libs_dir() -> Path | None:
    """$NEUROPREDICT_KAFKA_LIBS: where fetched Apache Kafka jars go (default: this checkout's
    serving/apache-kafka/libs); one folder can serve several checkouts."""
    folder = os.environ.get("NEUROPREDICT_KAFKA_LIBS")
    return Path(folder).expanduser() if folder else None


def kafka_home() -> Path | None:
    """$KAFKA_HOME: an Apache Kafka distribution of the user's own (else one is fetched with Maven)."""
    home = os.environ.get("KAFKA_HOME")
    return Path(home).expanduser() if home else None


def kafka_is_external() -> bool:
    """True when the user points us at their own cluster: then nothing embedded is started."""
    return bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))


# ---- loading and validation ----


def load_params(path: Path | str | None = None) -> Params:
    """Read params.yaml into a frozen, validated `Params`; raise ConfigError naming the key."""
    path = Path(path) if path else paths().params_file
    if not path.is_file():
        raise ConfigError(f"{path} not found: run from the project folder or set NEUROPREDICT_ROOT")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    params = _build(Params, raw, "")
    _check_consistency(params)
    if os.environ.get(TRACE_READS_ENV) and not _traced:
        _traced.append(True)
        _trace_reads(Path(os.environ[TRACE_READS_ENV]))
    return params


TRACE_READS_ENV = "NEUROPREDICT_TRACE_READS"  # a folder: each process records what it read there
_traced: list[bool] = []  # installed once per process


def _trace_reads(folder: Path) -> None:
    """A development aid: record every params key and every neuropredict module this process
    reads, in <folder>/<script>.json at exit. The tests check that dvc.yaml lists exactly these
    for each stage, so `dvc repro` reruns what a change affects and nothing else."""
    import atexit
    import sys

    from neuropredict.files import write_json

    read: set[str] = set()
    sections = {hint: name for name, hint in typing.get_type_hints(Params).items() if dataclasses.is_dataclass(hint)}
    for cls in (Params, *sections):
        prefix = sections.get(cls, "")
        names = {f.name for f in dataclasses.fields(cls) if not (cls is Params and f.name in
                                                                  {s for s in sections.values()})}

        def getattribute(self, name, _names=names, _prefix=prefix):
            if name in _names:
                read.add(_dotted(_prefix, name))
            return object.__getattribute__(self, name)

        cls.__getattribute__ = getattribute

    def save() -> None:
        modules = sorted(m.__file__ for name, m in list(sys.modules.items())
                         if name.split(".")[0] == "neuropredict" and getattr(m, "__file__", None))
        write_json(folder / f"{Path(sys.argv[0]).stem}.json", {"params": sorted(read), "modules": modules})

    atexit.register(save)


def params_from_dict(raw: dict[str, Any]) -> Params:
    params = _build(Params, raw, "")
    _check_consistency(params)
    return params


def as_dict(section: Any) -> dict[str, Any]:
    """A params section as plain data (for logging to MLflow or JSON)."""
    return dataclasses.asdict(section)


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix or "params.yaml"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = _dotted(prefix, unknown[0])
        raise ConfigError(f"unknown key '{key}'; allowed keys here: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = _dotted(prefix, name)
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing key '{key}' in params.yaml")
            continue
        values[name] = _coerce(hints[name], raw[name], key, f.metadata)
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str, meta: typing.Mapping[str, Any]) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"'{key}' is {value!r}; allowed: {', '.join(map(str, allowed))}")
        return value
    if origin is tuple:
        return _coerce_tuple(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"'{key}': union types are not supported in Params")  # pragma: no cover
    return _coerce_scalar(hint, value, key, meta)


def _coerce_tuple(hint: Any, value: Any, key: str) -> tuple[Any, ...]:
    args = typing.get_args(hint)
    if not isinstance(value, list) or not value:
        raise ConfigError(f"'{key}' must be a non-empty list, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        items = tuple(_coerce(args[0], v, f"{key}[{i}]", {}) for i, v in enumerate(value))
        if len(set(items)) != len(items):
            raise ConfigError(f"'{key}' has duplicates: {value!r}")
        return items
    if len(value) != len(args):
        raise ConfigError(f"'{key}' must be a list of {len(args)} values [min, max], got {value!r}")
    items = tuple(_coerce(a, v, f"{key}[{i}]", {}) for i, (a, v) in enumerate(zip(args, value)))
    if items[0] > items[1]:
        raise ConfigError(f"'{key}' must be [min, max] with min <= max, got {value!r}")
    return items


def _coerce_scalar(hint: Any, value: Any, key: str, meta: typing.Mapping[str, Any]) -> Any:
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        bool: isinstance(value, bool),
    }.get(hint)
    if ok is None:  # pragma: no cover - a Params field of an unsupported type is a bug here
        raise TypeError(f"unsupported params type {hint} for {key}")
    if not ok:
        raise ConfigError(f"'{key}' must be {_type_name(hint)}, got {value!r} ({type(value).__name__})")
    value = hint(value)
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"{lo if lo is not None else '-inf'} .. {hi if hi is not None else 'inf'}"
        raise ConfigError(f"'{key}' is {value}; allowed range: {bounds}")
    return value


def _type_name(hint: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[hint]


def _dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _check_consistency(params: Params) -> None:
    """Cross-key rules that no single field can check."""
    import pandas as pd

    dates = {
        "data.start": params.data.start,
        "data.end": params.data.end,
        "featurize.validation_start": params.featurize.validation_start,
        "featurize.test_start": params.featurize.test_start,
    }
    parsed = {}
    for key, text in dates.items():
        try:
            parsed[key] = pd.Timestamp(text)
        except (ValueError, TypeError):
            raise ConfigError(f"'{key}' is {text!r}; expected a date like 2024-01-01") from None
    order = ["data.start", "featurize.validation_start", "featurize.test_start", "data.end"]
    for a, b in zip(order, order[1:]):
        if not parsed[a] < parsed[b]:
            raise ConfigError(f"'{a}' ({dates[a]}) must be before '{b}' ({dates[b]})")
    if not params.data.symbols or any(not s or s != s.strip() for s in params.data.symbols):
        raise ConfigError("'data.symbols' must list ticker symbols such as AAPL")
    for key, values in (("tune.units", params.tune.units), ("tune.layers", params.tune.layers)):
        if any(v < 1 for v in values):
            raise ConfigError(f"'{key}' values must be >= 1, got {list(values)}")
    if not 0.0 <= params.tune.dropout[0] <= params.tune.dropout[1] < 1.0:
        raise ConfigError(f"'tune.dropout' must be [min, max] within [0, 1), got {list(params.tune.dropout)}")
    if not 0.0 < params.tune.learning_rate[0]:
        raise ConfigError(f"'tune.learning_rate' must be positive, got {list(params.tune.learning_rate)}")
    levels = params.intervals.levels
    if not all(0.0 < level < 1.0 for level in levels) or list(levels) != sorted(levels):
        raise ConfigError(f"'intervals.levels' must be coverages between 0 and 1 in increasing order, "
                          f"e.g. [0.8, 0.95]; got {list(levels)}")
