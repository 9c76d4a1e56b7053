"""params.yaml's schema: a frozen, typed `Params` whose fields mirror the YAML, validated by
pydantic. `load_params()` is the only reader of params.yaml; an unknown, missing, mistyped or
out-of-range key is a ConfigError of one line naming the dotted key and what is allowed."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from neuropredict.errors import ConfigError
from neuropredict.settings.paths import paths


def _int(lo: int | None = None, hi: int | None = None) -> Any:
    return Annotated[int, Field(strict=True, ge=lo, le=hi)]


def _num(lo: float | None = None, hi: float | None = None) -> Any:
    return Annotated[float, Field(strict=True, ge=lo, le=hi)]


def _distinct(items: tuple) -> tuple:
    if len(set(items)) != len(items):
        raise ValueError(f"has duplicates: {list(items)!r}")
    return items


def _ordered(pair: tuple) -> tuple:
    if pair[0] > pair[1]:
        raise ValueError(f"must be [min, max] with min <= max, got {list(pair)!r}")
    return pair


Text = Annotated[str, Field(strict=True)]
Date = Annotated[str, Field(strict=True)]  # checked (and ordered) by _check_consistency


def _list(item: Any) -> Any:
    """A non-empty list of distinct items (a tuple once loaded)."""
    return Annotated[tuple[item, ...], Field(min_length=1), AfterValidator(_distinct)]


def _range(item: Any) -> Any:
    """[min, max]."""
    return Annotated[tuple[item, item], AfterValidator(_ordered)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


LATEST = "latest"  # data.end: up to the newest data the source has


class DataParams(_Section):
    symbols: _list(Text)
    start: Date
    end: Date  # a date, or LATEST
    interval: Literal["1d", "1m"] = "1d"
    source: Literal["auto", "yfinance", "snapshot"] = "auto"
    download_timeout_s: _num(0.1, 600) = 20.0

    @property
    def intraday(self) -> bool:
        return self.interval != "1d"

    @property
    def latest(self) -> bool:
        return self.end == LATEST


class ValidateParams(_Section):
    max_gap_days: _num(0.0) = 5.0
    max_abs_log_return: _num(0.0) = 0.4


class FeaturizeParams(_Section):
    window: _int(3, 2000)
    # the periods are counted back from the data's last session, so new data moves all three splits
    validation_sessions: _int(1)
    test_sessions: _int(1)
    price_column: Literal["Close", "Open", "High", "Low"] = "Close"


class TuneParams(_Section):
    tuner: Literal["random", "bayesian", "hyperband"] = "bayesian"
    cells: _list(Literal["lstm", "gru"]) = ("lstm", "gru")
    trials_per_cell: _int(1, 500) = 4
    max_epochs: _int(1, 1000) = 20
    patience: _int(1, 1000) = 3
    batch_size: _int(1, 65536) = 64
    units: _list(_int(1)) = (16, 32, 64)
    layers: _list(_int(1)) = (1, 2)
    dropout: _range(_num(0.0, 0.999)) = (0.0, 0.3)
    learning_rate: _range(_num(1e-12)) = (3e-4, 3e-3)
    parsimony_tolerance: _num(0.0, 1.0) = 0.002


class IntervalParams(_Section):
    levels: _list(_num()) = (0.8, 0.95)  # in (0, 1), increasing: _check_consistency
    ewma_lambda: _num(0.0, 0.9999) = 0.94
    min_coverage_p: _num(0.0, 1.0) = 0.01
    online: bool = True  # the served interval's quantile tracked online (adaptive.py); false: static


class RegisterParams(_Section):
    model_name: Text = "stock-price-forecaster"
    max_dm_t: _num() = 2.0
    min_mean_skill: _num() = -0.005


class KafkaParams(_Section):
    partitions: _int(1, 1000) = 4
    replication_factor: _int(1, 10) = 1
    # before every topic and group name: staging and production (or tests) on one cluster
    topic_prefix: Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9._-]{0,200}$")] = ""


class ServingParams(_Section):
    max_poll_records: _int(1, 1_000_000) = 5000
    poll_timeout_ms: _int(0, 60_000) = 100
    fetch_max_wait_ms: _int(0, 60_000) = 10
    alias_poll_interval_s: _num(0.1, 3600) = 5.0
    metrics_interval_s: _num(0.1, 3600) = 10.0
    metrics_port: _int(0, 65535) = 0  # the Prometheus endpoint (0: none); NEUROPREDICT_METRICS_PORT overrides
    producer_linger_ms: _int(0, 10_000) = 5
    producer_batch_bytes: _int(1024, 16 * 1024 * 1024) = 262144
    compression: Literal["none", "gzip", "lz4"] = "lz4"
    model_threads: _int(0, 256) = 1
    restore_lookback_max: _int(0, 100_000_000) = 100_000
    delivery_timeout_ms: _int(1000, 3_600_000) = 30_000
    level_shift_ticks: _int(2, 10_000) = 5  # 1 would make every spike a new level
    guarantee: Literal["exactly_once", "at_least_once"] = "exactly_once"
    commit_interval_ms: _int(0, 60_000) = 0  # exactly-once: a transaction holds the batches of this long
    # versions scored beside production on the same ticks, into their own topic ([]: none)
    shadow_aliases: Annotated[tuple[Text, ...], AfterValidator(_distinct)] = ("challenger",)


class PromoteParams(_Section):
    """`neuropredict promote`: refuse a candidate significantly worse than production on live ticks."""

    max_dm_t: _num() = 2.0     # DM t of candidate - production squared errors on the same live ticks
    min_ticks: _int(2) = 200   # live ticks both scored before that evidence counts


class GuardParams(_Section):
    """The rollback guard: production's last live forecasts against persistence and nominal coverage."""

    window_ticks: _int(10) = 300      # the newest forecasts of production's version it judges
    max_dm_t: _num() = 3.0            # breach: worse than persistence with DM t above this
    min_coverage_p: _num(0.0, 1.0) = 0.0001  # breach: an interval's coverage binomial p below this
    check_interval_s: _num(0.1, 3600) = 5.0


with warnings.catch_warnings():  # sections named `validate` and `register` hide BaseModel's methods of those names
    warnings.filterwarnings("ignore", message='Field name "(validate|register)"')

    class Params(_Section):
        seed: _int()
        data: DataParams
        validate: ValidateParams
        featurize: FeaturizeParams
        tune: TuneParams
        register: RegisterParams
        kafka: KafkaParams
        serving: ServingParams
        intervals: IntervalParams = IntervalParams()
        promote: PromoteParams = PromoteParams()
        guard: GuardParams = GuardParams()


# ---- loading ----


def load_params(path: Path | str | None = None) -> Params:
    """Read params.yaml into a frozen, validated `Params`; raise ConfigError naming the key."""
    path = Path(path) if path else paths().params_file
    if not path.is_file():
        raise ConfigError(f"{path} not found: run from the project folder or set NEUROPREDICT_ROOT")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return params_from_dict(raw)


def params_from_dict(raw: Any) -> Params:
    if not isinstance(raw, dict):
        raise ConfigError(f"params.yaml: expected a mapping of keys, got {type(raw).__name__}")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc.errors()[0])) from None
    _check_consistency(params)
    return params


def as_dict(section: BaseModel) -> dict[str, Any]:
    """A params section as plain data (for logging to MLflow or JSON). Field by field: what a
    stage logs, it reads (the test's read tracer counts it)."""
    out = {}
    for name in type(section).model_fields:
        value = getattr(section, name)
        out[name] = as_dict(value) if isinstance(value, BaseModel) else list(value) if isinstance(value, tuple) else value
    return out


# ---- one line per error: the dotted key, what it is, what is allowed ----

_TYPES = {"int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
          "float_type": "a number", "float_parsing": "a number", "string_type": "a string",
          "bool_type": "true or false", "bool_parsing": "true or false"}


def _one_line(error: dict[str, Any]) -> str:
    loc, kind, value = error["loc"], error["type"], error.get("input")
    key = _dotted(loc)
    if kind == "extra_forbidden":
        return f"unknown key '{key}'; allowed keys here: {', '.join(_allowed(loc[:-1]))}"
    if kind == "missing" and isinstance(loc[-1], int):  # a [min, max] pair that is short
        return f"'{_dotted(loc[:-1])}' must be a list of 2 values [min, max], got {value!r}"
    if kind == "missing":
        return f"missing key '{key}' in params.yaml"
    if kind == "too_long" and loc and not isinstance(loc[-1], int):
        return f"'{key}' must be a list of 2 values [min, max], got {value!r}"
    if kind in _TYPES:
        return f"'{key}' must be {_TYPES[kind]}, got {value!r} ({type(value).__name__})"
    if kind in ("greater_than_equal", "less_than_equal"):
        lo, hi = _bounds(loc)
        return f"'{key}' is {value}; allowed range: {lo if lo is not None else '-inf'} .. {hi if hi is not None else 'inf'}"
    if kind == "literal_error":
        allowed = error["ctx"]["expected"].replace("'", "").replace(" or ", ", ")
        return f"'{key}' is {value!r}; allowed: {allowed}"
    if kind in ("tuple_type", "too_short"):
        return f"'{key}' must be a non-empty list, got {value!r}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{key or 'params.yaml'}: expected a mapping of keys, got {type(value).__name__}"
    if kind == "string_pattern_mismatch":
        return f"'{key}' is {value!r}; allowed: letters, digits, '.', '_' and '-' (at most 200)"
    if kind == "value_error":
        return f"'{key}' {str(error['ctx']['error'])}"
    return f"'{key}': {error['msg']}"


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _section(loc: tuple) -> type[BaseModel]:
    model: Any = Params
    for part in loc:
        if isinstance(part, str):
            model = model.model_fields[part].annotation
    return model


def _allowed(loc: tuple) -> list[str]:
    return list(_section(loc).model_fields)


def _bounds(loc: tuple) -> tuple[Any, Any]:
    """The [ge, le] of the field at loc (a list item's: its item type's)."""
    names = [p for p in loc if isinstance(p, str)]
    field = _section(tuple(names[:-1])).model_fields[names[-1]]
    metadata = list(field.metadata)
    if isinstance(loc[-1], int):  # an item of a list: the bounds of its annotated item type
        item = field.annotation.__args__[0] if field.annotation.__args__ else None
        metadata = list(getattr(item, "__metadata__", ()))
        metadata = [m for fi in metadata for m in getattr(fi, "metadata", [fi])]
    lo = next((m.ge for m in metadata if hasattr(m, "ge")), None)
    hi = next((m.le for m in metadata if hasattr(m, "le")), None)
    return lo, hi


def _check_consistency(params: Params) -> None:
    """Cross-key rules that no single field can check."""
    import pandas as pd

    dates = {"data.start": params.data.start}
    if params.data.end != LATEST:
        dates["data.end"] = params.data.end
    parsed = {}
    for key, text in dates.items():
        try:
            parsed[key] = pd.Timestamp(text)
        except (ValueError, TypeError):
            hint = " or 'latest'" if key == "data.end" else ""
            raise ConfigError(f"'{key}' is {text!r}; expected a date like 2024-01-01{hint}") from None
    if "data.end" in parsed and not parsed["data.start"] < parsed["data.end"]:
        raise ConfigError(f"'data.start' ({dates['data.start']}) must be before 'data.end' ({dates['data.end']})")
    if any(not s or s != s.strip() for s in params.data.symbols):
        raise ConfigError("'data.symbols' must list ticker symbols such as AAPL")
    levels = params.intervals.levels
    if not all(0.0 < level < 1.0 for level in levels) or list(levels) != sorted(levels):
        raise ConfigError(f"'intervals.levels' must be coverages between 0 and 1 in increasing order, "
                          f"e.g. [0.8, 0.95]; got {list(levels)}")
