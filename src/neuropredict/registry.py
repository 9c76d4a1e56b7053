"""The MLflow Model Registry: register, compare with production, move aliases, load by alias."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from neuropredict import intervals, promotions, tracking
from neuropredict.errors import ConfigError, ModelNotFoundError, NeuropredictError
from neuropredict.features import series_splits
from neuropredict.files import read_json, write_json
from neuropredict.promotions import alias_version  # the registry's readers find it here too
from neuropredict.settings import environment
from neuropredict.settings.contracts import CHALLENGER_ALIAS, PRODUCTION_ALIAS
from neuropredict.settings.paths import Paths
from neuropredict.settings.schema import Params, RegisterParams

log = logging.getLogger(__name__)

PIP_PACKAGES = ("mlflow", "keras", "numpy", "pandas")


def _client():
    """A client on our store. No experiment set-up: the alias is polled every few seconds."""
    return tracking.client()


def _pip_requirements() -> list[str]:
    reqs = [f"{d}=={importlib.metadata.version(d)}" for d in PIP_PACKAGES]
    for tf in ("tensorflow-cpu", "tensorflow"):
        try:
            reqs.append(f"{tf}=={importlib.metadata.version(tf)}")
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    return reqs


@dataclass(frozen=True)
class ServedModel:
    """A forecaster loaded from the registry, and which version it is."""

    version: str
    forecaster: Any  # neuropredict.forecaster.Forecaster


def load(name: str, alias: str = PRODUCTION_ALIAS, version: str | None = None) -> ServedModel:
    """Load by alias (or an explicit version) through the pyfunc: model + scaler travel together.
    A version is immutable: the last few loaded are kept (a swap back, several workers in one
    process, parity beside a worker) and shared, so nobody may change a loaded forecaster."""
    version = version or alias_version(name, alias)
    if version is None:
        raise ModelNotFoundError(
            f"no model '{name}@{alias}' in {tracking_uri_hint()}: train and register one with `dvc repro`")
    return _load_version(environment.tracking_uri(), name, str(version))


@functools.lru_cache(maxsize=4)
def _load_version(store: str, name: str, version: str) -> ServedModel:
    import mlflow.pyfunc

    tracking.connect()
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    return ServedModel(version=version, forecaster=pyfunc.unwrap_python_model().forecaster)


def model_window(name: str, version: str) -> int:
    """A version's window length, from its metadata (no need to load the model)."""
    import mlflow

    info = tracking.with_retry(lambda: mlflow.models.get_model_info(f"models:/{name}/{version}"))
    return int(info.metadata["window"])


def model_id(name: str, version: str) -> str | None:
    """The LoggedModel id behind a version (metrics logged with it show on the model's page)."""
    try:
        mv = tracking.with_retry(lambda: _client().get_model_version(name, str(version)))
    except Exception:  # linking is a nicety; never fail serving over it
        return None
    source = mv.model_id or mv.source or ""
    return source.removeprefix("models:/") if source.startswith(("models:/m-", "m-")) else None


def version_tags(name: str, version: str) -> dict[str, str]:
    try:
        return dict(tracking.with_retry(lambda: _client().get_model_version(name, str(version))).tags)
    except Exception:  # informational only
        return {}


def tracking_uri_hint() -> str:
    from neuropredict.settings.environment import tracking_uri

    return tracking_uri()


def log_and_register(forecaster_dir: Path, name: str, series: dict, tags: dict[str, str],
                     metadata: dict[str, Any]) -> str:
    """Log the forecaster as a pyfunc (model + fitted scaler, signature, input example); register it."""
    import mlflow
    from mlflow.models import infer_signature

    from neuropredict import pyfunc_model
    from neuropredict.forecaster import Forecaster, ForecasterModel, input_example

    pyfunc = ForecasterModel()
    pyfunc.forecaster = Forecaster.load(forecaster_dir)  # as load_context would: one load for both
    example = input_example(pyfunc.forecaster, series)
    signature = infer_signature(example, pyfunc.predict(None, example))
    info = mlflow.pyfunc.log_model(
        name="forecaster", python_model=pyfunc_model.__file__, artifacts={"forecaster": str(forecaster_dir)},
        signature=signature, input_example=example, pip_requirements=_pip_requirements(), metadata=metadata,
    )
    with contextlib.redirect_stderr(io.StringIO()) as said:  # MLflow prints what the stage says itself
        mv = tracking.with_retry(lambda: mlflow.register_model(info.model_uri, name, tags=tags))
    log.debug(said.getvalue().strip())
    return str(mv.version)


def identity(name: str) -> dict[str, Any]:
    """What tells DVC which registry `register` writes to: the registered model's name and creation
    time (created here when the registry lacks it). Another registry, or a wiped one, changes it,
    so `register` runs there; the same registry keeps it, so nothing reruns."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        model = tracking.with_retry(lambda: client.get_registered_model(name))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        try:
            model = client.create_registered_model(name)
        except MlflowException:  # another process created it first
            model = client.get_registered_model(name)
    return {"model": name, "created_ms": int(model.creation_timestamp)}


def require_version(name: str, version: str) -> None:
    """Raise ModelNotFoundError (one line, with what exists) for a version the registry lacks."""
    from mlflow.exceptions import MlflowException

    try:
        _client().get_model_version(name, str(version))
    except MlflowException:
        known = ", ".join(v["version"] for v in list_versions(name)) or "none"
        raise ModelNotFoundError(
            f"'{name}' has no version {version} (versions: {known}); see `neuropredict models`") from None


def list_versions(name: str) -> list[dict[str, Any]]:
    """Every version with its aliases and key tags, newest first."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        aliases = client.get_registered_model(name).aliases  # {'production': '3'}
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    by_version: dict[str, list[str]] = {}
    for alias, v in aliases.items():
        by_version.setdefault(str(v), []).append(alias)
    rows = []
    for mv in client.search_model_versions(f"name = '{name}'"):
        rows.append({"version": str(mv.version), "aliases": sorted(by_version.get(str(mv.version), [])),
                     "created": mv.creation_timestamp, "tags": dict(mv.tags), "run_id": mv.run_id})
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)


def gate(scores: dict[str, dict[str, float]], params: RegisterParams,
         calibration: tuple[dict[str, dict[str, float]], tuple[float, ...], float] | None = None) -> list[str]:
    """Reasons the model may not serve; empty when it passes. Requiring skill >= 0 on every symbol
    would reward luck (one symbol's skill has a standard error of about 1 point on 252 days);
    instead: no symbol significantly worse than persistence, and mean skill above a bound.
    With `calibration` (validation interval scores, levels, least p): no symbol's coverage significantly
    off nominal by an exact binomial test (a fixed band of ±k points would fail a perfect model
    by chance somewhere among 7 symbols and 2 levels)."""
    reasons = []
    if calibration is not None:
        validation, levels, min_p = calibration
        off = intervals.miscalibrated(validation, levels, min_p)
        if off:
            shown = off if len(off) <= 4 else [*off[:3], f"{len(off) - 3} more"]
            reasons.append(f"intervals miscalibrated on validation (binomial p < {min_p:g}): " + "; ".join(shown))
    pooled = scores["_pooled"]
    worse = [s for s, m in scores.items() if not s.startswith("_") and m["dm_t"] >= params.max_dm_t]
    if worse:
        reasons.append(f"significantly worse than persistence on {', '.join(worse)} "
                       f"(DM t >= {params.max_dm_t:g})")
    if not pooled["mean_skill"] > params.min_mean_skill:  # NaN fails too
        reasons.append(f"mean skill {100 * pooled['mean_skill']:+.2f} % is not above "
                       f"{100 * params.min_mean_skill:+.2f} %")
    return reasons


def decide(challenger: dict, production: dict | None, params: RegisterParams,
           calibration: tuple[dict, tuple[float, ...], float] | None = None,
           incomparable: str | None = None) -> tuple[bool, str]:
    """Promote when the gate passes and the challenger beats production on the same test rows.
    When production cannot score them (`incomparable` says why), the gate against persistence
    decides alone."""
    failed = gate(challenger, params, calibration)
    c_skill = challenger["_pooled"]["mean_skill"]
    if incomparable:
        if failed:
            return False, f"{incomparable}; fails the gate: " + "; ".join(failed)
        return True, f"{incomparable}; passes the gate against persistence (mean skill {100 * c_skill:+.2f} %)"
    if production is None:
        if failed:
            log.warning("first model becomes production although it fails the gate: %s", "; ".join(failed))
            return True, "first registered model (WARNING: " + "; ".join(failed) + ")"
        return True, f"first registered model; passes the gate (mean skill {100 * c_skill:+.2f} %)"
    p_skill = production["_pooled"]["mean_skill"]
    if failed:
        return False, "fails the gate: " + "; ".join(failed)
    if not c_skill > p_skill:  # NaN never beats anything
        return False, (f"does not beat production: mean skill {100 * c_skill:+.2f} % vs "
                       f"{100 * p_skill:+.2f} % on the same test period")
    return True, f"beats production: mean skill {100 * c_skill:+.2f} % vs {100 * p_skill:+.2f} %"


@dataclass(frozen=True)
class OfflineEvidence:
    """A version's scores on the test period (point forecasts beside the baselines; its intervals)
    and its intervals on validation, where the gate checks calibration."""

    scores: dict[str, dict[str, float]]
    spreads: dict[str, dict[str, float]] | None
    validation: dict[str, dict[str, float]] | None
    levels: tuple[float, ...]

    def summary(self) -> dict[str, float]:
        """The pooled figures an alias move records as its evidence."""
        pooled = self.scores["_pooled"]
        out = {f"test_{k}": pooled[k] for k in ("mse", "persistence_mse", "mean_skill", "max_dm_t")}
        for p in self.levels if self.spreads else ():
            out[f"test_coverage_{intervals.label(p)}"] = self.spreads["_pooled"][f"coverage_{intervals.label(p)}"]
        return out


def load_series(params: Params, project: Paths) -> dict:
    from neuropredict.features import load_price_series

    return load_price_series(project.raw_dir, params.data.symbols, params.data.interval, params.featurize.price_column)


def offline_evidence(forecaster, series: dict, params: Params) -> OfflineEvidence:
    """Score a forecaster as `register` does: the test period, and validation for calibration.
    Raises Incomparable when it cannot forecast this pipeline's test rows."""
    from neuropredict.forecaster import forecast_period

    scores, spreads = _test_scores(forecaster, series, params)
    calibration = forecaster.calibration
    levels = calibration.levels if calibration else ()
    periods = series_splits(series, params.featurize)
    validation = intervals.score(forecast_period(forecaster, series, periods.validation_start,
                                                 periods.last_validation_day), levels) if calibration else None
    return OfflineEvidence(scores, spreads, validation, levels)


class Incomparable(NeuropredictError):
    """A version cannot forecast this pipeline's test rows: another interval, other symbols, or a
    window longer than the data."""


def comparable(forecaster, params: Params) -> None:
    """Raise Incomparable, naming why, when `forecaster` was trained for other data than params'."""
    if forecaster.intraday != params.data.intraday:
        kind = "an intraday (1-minute)" if forecaster.intraday else "a daily"
        raise Incomparable(f"it is {kind} model and this pipeline trains on {params.data.interval} bars")
    unseen = [s for s in params.data.symbols if s not in forecaster.scaler.mean]
    if unseen:
        raise Incomparable(f"it was not trained on {', '.join(unseen)}")


def gate_reasons(evidence: OfflineEvidence, params: Params) -> list[str]:
    """Why a version fails the registration gate (empty: it passes)."""
    calibration = ((evidence.validation, evidence.levels, params.intervals.min_coverage_p)
                   if evidence.validation is not None else None)
    return gate(evidence.scores, params.register, calibration)


def register_tuned(params: Params, project: Paths) -> dict[str, Any]:
    """The register stage: new version + `challenger`; `production` moves only if earned.
    Both moves are recorded in the alias history (kind `gate`)."""
    from neuropredict.forecaster import Forecaster

    name = params.register.model_name
    series = load_series(params, project)
    forecaster = Forecaster.load(project.best_model_dir)
    if forecaster.calibration is None:
        raise ConfigError(f"{project.best_model_dir} has no interval calibration (intervals.json): "
                          f"run `dvc repro tune` to train and calibrate it again")
    challenger = offline_evidence(forecaster, series, params)
    previous = alias_version(name, PRODUCTION_ALIAS)
    period = series_splits(series, params.featurize).test_period
    tags, metadata = _describe(params, project, challenger.scores["_pooled"], challenger.spreads["_pooled"],
                               challenger.levels, period)
    version = log_and_register(project.best_model_dir, name, series, tags, metadata)
    production, incomparable = None, None
    if previous:
        try:
            production = _test_scores(load(name, version=previous).forecaster, series, params)[0]
        except Incomparable as exc:
            incomparable = f"production v{previous} cannot score this test period: {exc}"
            print(f"register: {incomparable}; deciding against persistence alone")
    promoted, reason = decide(challenger.scores, production, params.register,
                              (challenger.validation, challenger.levels, params.intervals.min_coverage_p),
                              incomparable)
    evidence = challenger.summary()
    promotions.move(name, CHALLENGER_ALIAS, version, "gate", f"registered by the pipeline; {reason}", evidence)
    if promoted:
        promotions.move(name, PRODUCTION_ALIAS, version, "gate", reason, evidence)
    return _record(params, project, version, previous, promoted, reason, challenger.scores, production,
                   (challenger.spreads, challenger.validation, challenger.levels), period)


def _test_scores(forecaster, series: dict, params: Params) -> tuple[dict, dict | None]:
    """A forecaster's scores on the test period beside the baselines, on the same rows for all:
    of its point forecasts, and of the intervals it serves (None for a model without)."""
    from neuropredict.evaluation import score_rows
    from neuropredict.forecaster import served_period

    comparable(forecaster, params)
    periods = series_splits(series, params.featurize)
    rows = served_period(forecaster, series, periods.test_start, periods.end)
    if rows.empty:
        raise Incomparable(f"its window of {forecaster.window} prices leaves no forecast in the test period "
                           f"{periods.test_period}")
    calibration = forecaster.calibration
    return score_rows(rows), intervals.score(rows, calibration.levels) if calibration else None


def _describe(params: Params, project: Paths, pooled: dict[str, float], spread: dict[str, float],
              levels: tuple[float, ...], period: str) -> tuple[dict[str, str], dict[str, Any]]:
    """Version tags (searchable in the registry) and model metadata (travels with the model)."""
    from neuropredict.sources import read_manifest

    selection = read_json(project.selection_file)
    tags = {"cell": selection["cell"], "window": str(selection["window"]), "interval": params.data.interval,
            "data_source": str(read_manifest(project.raw_dir)["source"]), "git_commit": tracking.git_commit(project.root),
            "test_period": period, "val_loss": repr(selection["val_loss"]),
            **{f"test_{k}": repr(pooled[k]) for k in ("mse", "persistence_mse", "mean_skill", "max_dm_t")},
            "interval_levels": ",".join(intervals.label(p) for p in levels),
            **{f"test_{k}_{intervals.label(p)}": f"{spread[f'{k}_{intervals.label(p)}']:.4g}" for p in levels
               for k in ("coverage", "interval_score", "ewma_interval_score", "constant_interval_score")}}
    metadata = {"cell": selection["cell"], "window": selection["window"], "interval": params.data.interval,
                "hyperparameters": selection["hyperparameters"], "test_period": period.split("..")}
    return tags, metadata


def _record(params: Params, project: Paths, version: str, previous: str | None, promoted: bool, reason: str,
            challenger: dict, production: dict | None, spreads: tuple[dict, dict, tuple[float, ...]],
            period: str) -> dict[str, Any]:
    """metrics/register.json for DVC, and the same figures in the stage's MLflow run."""
    import mlflow

    from neuropredict.evaluation import flat_metrics, format_table

    pooled = challenger["_pooled"]
    decision = {"version": version, "previous_production": previous, "promoted": promoted,
                "verdict": "production" if promoted else f"challenger (production stays {previous})",
                "reason": reason, "test_period": period, "test_mean_skill": pooled["mean_skill"], "test_mse": pooled["mse"],
                "test_persistence_mse": pooled["persistence_mse"], "test_max_dm_t": pooled["max_dm_t"],
                "production_test_mean_skill": production["_pooled"]["mean_skill"] if production else None}
    test, validation, levels = spreads
    for p in levels:
        tag = intervals.label(p)
        decision[f"test_coverage_{tag}"] = test["_pooled"][f"coverage_{tag}"]
        decision[f"validation_min_coverage_p_{tag}"] = min(m[f"coverage_p_{tag}"] for s, m in validation.items()
                                                           if not s.startswith("_"))
    write_json(project.metrics_dir / "register.json", decision)
    mlflow.log_metrics({**flat_metrics(challenger, "test"), **flat_metrics(test, "test"),
                        **flat_metrics(validation, "validation"), "promoted": float(promoted)})
    mlflow.set_tags({"model_version": version, "promoted": str(promoted)})
    title = f"{params.register.model_name} v{version} on {period}"
    mlflow.log_text(format_table(challenger, title), "test_scores.txt")
    mlflow.log_text(intervals.format_table(test, levels, title + " (intervals)"), "test_intervals.txt")
    return decision
