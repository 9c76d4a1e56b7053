"""The tune stage: keras-tuner searches each cell type, every trial a nested MLflow run.

Each cell type gets the same budget (its own tuner, `trials_per_cell` trials), so the LSTM-vs-GRU
comparison is fair. The overall winner is chosen on the validation period only; the test period
is then reported for both cells' best models, never used to choose.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from neuropredict import backtests, intervals, plots, tracking
from neuropredict.evaluation import flat_metrics, format_table, score_rows
from neuropredict.features import SCALER_FILE, ReturnScaler, Splits, WindowSet, load_price_series, series_splits
from neuropredict.files import write_json
from neuropredict.forecaster import Forecaster, calibrate, calibration_curve, served_period
from neuropredict.hypermodel import ForecasterHyperModel, seed_everything
from neuropredict.settings.paths import Paths
from neuropredict.settings.schema import Params, TuneParams

log = logging.getLogger(__name__)
HYPERBAND_FACTOR = 3  # keras-tuner's default reduction factor between Hyperband brackets

TUNER_STATE_KEYS = ("tuner/epochs", "tuner/initial_epoch", "tuner/bracket", "tuner/round", "tuner/trial_id")


@dataclass
class CellResult:
    cell: str
    best_hp: dict[str, Any]
    best_val_loss: float
    trials: int
    model: Any  # keras.Model with the chosen trial's best-epoch weights
    history: dict[str, list[float]]  # the chosen trial's per-epoch train/validation loss
    n_params: int  # size of the chosen model (what it costs to serve)
    lowest_val_loss: float  # the best validation loss any trial of this cell reached


def supervised(rows: WindowSet, scaler: ReturnScaler) -> tuple[np.ndarray, np.ndarray]:
    """Windows -> (model input, standardised next return) with the training-fitted scaler."""
    mu, sd = scaler.stats(rows.symbols)
    return scaler.to_model_input(rows.windows, mu, sd), scaler.to_target(rows.windows, rows.targets, mu, sd)


def _tuner_class(kind: str):
    import keras_tuner as kt

    base = {"random": kt.RandomSearch, "bayesian": kt.BayesianOptimization, "hyperband": kt.Hyperband}[kind]

    class MlflowTuner(_MlflowTrials, base):  # the mixin goes first so it wraps run_trial
        pass

    return MlflowTuner


@dataclass
class Progress:
    total: int
    done: int = 0

    def label(self) -> str:
        return f"trial {self.done}/{self.total}"


class _MlflowTrials:
    """Mixin: each trial is a nested MLflow run with its hyperparameters and learning curves."""

    progress = Progress(0)

    def run_trial(self, trial, *args, **kwargs):
        import mlflow

        hp = {k: v for k, v in trial.hyperparameters.values.items() if k not in TUNER_STATE_KEYS}
        self.progress.done += 1
        label = " ".join(f"{k}={_short(v)}" for k, v in hp.items())
        log.info("%s  %s", self.progress.label(), label)
        started = time.perf_counter()
        with mlflow.start_run(run_name=f"trial-{hp['cell']}-{trial.trial_id}", nested=True,
                              tags={"neuropredict.stage": "tune-trial", "cell": hp["cell"]}):
            mlflow.log_params(hp)
            mlflow.log_metric("n_params", self.hypermodel.build(trial.hyperparameters).count_params())
            histories = super().run_trial(trial, *args, **kwargs)
            history = histories[0].history if isinstance(histories, list) else histories.history
            self.histories[trial.trial_id] = {k: [float(v) for v in history[k]] for k in ("loss", "val_loss")}
            for step, (loss, val) in enumerate(zip(history["loss"], history["val_loss"])):
                mlflow.log_metrics({"train_loss": loss, "val_loss": val}, step=step)
            best = float(np.min(history["val_loss"]))
            mlflow.log_metrics({"best_val_loss": best, "epochs_run": len(history["loss"]),
                                "best_epoch": int(np.argmin(history["val_loss"])) + 1,
                                "trial_seconds": time.perf_counter() - started})
        log.info("%s  best val_loss %.4f (ran %d epochs, %.1f s)", self.progress.label(), best,
                 len(history["loss"]), time.perf_counter() - started)
        return histories


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


class EpochLog(keras.callbacks.Callback):
    """One log line per epoch: progress without a progress bar."""

    def __init__(self, max_epochs: int):
        super().__init__()
        self.max_epochs = max_epochs
        self.t0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        log.info("    epoch %2d/%d  loss %.4f  val_loss %.4f  (%.1f s)", epoch + 1, self.max_epochs,
                 logs.get("loss", float("nan")), logs.get("val_loss", float("nan")), time.perf_counter() - self.t0)


def search(params: TuneParams, seed: int, train: WindowSet, validation: WindowSet,
           scaler: ReturnScaler, tuner_dir: Path) -> list[CellResult]:
    """Run one tuner per cell type; return each cell's best model, chosen on validation loss."""
    x, y = supervised(train, scaler)
    xv, yv = supervised(validation, scaler)
    tuner_dir = Path(tuner_dir)
    shutil.rmtree(tuner_dir, ignore_errors=True)
    progress = Progress(_expected_trials(params))
    results = []
    for cell in params.cells:
        seed_everything(seed)
        tuner = _make_tuner(params, seed, cell, x.shape[1], tuner_dir)
        tuner.progress, tuner.histories = progress, {}
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=params.patience,
                                             restore_best_weights=True)
        tuner.search(x, y, validation_data=(xv, yv), epochs=params.max_epochs, batch_size=params.batch_size,
                     shuffle=True, callbacks=[stop, EpochLog(params.max_epochs)], verbose=0)
        trials = [t for t in tuner.oracle.get_best_trials(len(tuner.oracle.trials)) if t.score is not None]
        sizes = {t.trial_id: tuner.hypermodel.build(t.hyperparameters).count_params() for t in trials}
        chosen = parsimonious([(t, float(t.score), sizes[t.trial_id]) for t in trials], params.parsimony_tolerance)
        hp = {k: v for k, v in chosen.hyperparameters.values.items() if k not in TUNER_STATE_KEYS}
        results.append(CellResult(cell, hp, float(chosen.score), len(tuner.oracle.trials),
                                  tuner.load_model(chosen), tuner.histories[chosen.trial_id],
                                  sizes[chosen.trial_id], float(trials[0].score)))
        log.info("%s: chose trial %s (%d parameters, val_loss %.4f; lowest %.4f)", cell, chosen.trial_id,
                 sizes[chosen.trial_id], chosen.score, trials[0].score)
    return results


def parsimonious(candidates: list[tuple[Any, float, int]], tolerance: float) -> Any:
    """Of (item, validation loss, size) candidates, the smallest whose loss is within `tolerance`
    (relative) of the lowest: differences that small are noise on one validation year, while a
    bigger model costs every served tick. Ties go to the lower loss."""
    lowest = min(loss for _, loss, _ in candidates)
    near = [c for c in candidates if c[1] <= lowest + tolerance * abs(lowest)]  # an NLL can be negative
    return min(near, key=lambda c: (c[2], c[1]))[0]


def _make_tuner(params: TuneParams, seed: int, cell: str, steps: int, tuner_dir: Path):
    cls = _tuner_class(params.tuner)
    common = dict(hypermodel=ForecasterHyperModel(cell, steps, params), objective="val_loss", seed=seed,
                  directory=str(tuner_dir), project_name=cell, overwrite=True)
    if params.tuner == "hyperband":
        return cls(max_epochs=params.max_epochs, factor=HYPERBAND_FACTOR, hyperband_iterations=1, **common)
    return cls(max_trials=params.trials_per_cell, **common)


def _expected_trials(params: TuneParams) -> int:
    if params.tuner != "hyperband":
        return params.trials_per_cell * len(params.cells)
    import math

    # keras-tuner's Hyperband runs about this many trials per iteration
    s_max = int(math.log(params.max_epochs, 3)) if params.max_epochs > 1 else 0
    per = sum(math.ceil((s_max + 1) / (s + 1) * 3**s) for s in range(s_max + 1))
    return per * len(params.cells)


def null_validation_loss(validation: WindowSet, scaler: ReturnScaler) -> float:
    """Validation loss of always forecasting the training mean and volatility (standardised 0, 1)."""
    _, yv = supervised(validation, scaler)
    return float(0.5 * np.mean(yv.astype(np.float64) ** 2))


def pick_winner(results: list[CellResult], tolerance: float) -> CellResult:
    """Chosen on validation loss (with the same parsimony rule); the test period plays no part."""
    return parsimonious([(r, r.best_val_loss, r.n_params) for r in results], tolerance)


def run(params: Params, project: Paths) -> dict[str, Any]:
    """The tune stage: search, save each cell's best forecaster, score both on the test period."""
    scaler = ReturnScaler.load(project.features_dir / SCALER_FILE)
    train, validation = (WindowSet.load(project.features_dir / f"{s}.npz") for s in ("train", "validation"))
    results = search(params.tune, params.seed, train, validation, scaler, project.tuner_dir)
    winner = pick_winner(results, params.tune.parsimony_tolerance)
    series = load_price_series(project.raw_dir, params.data.symbols, params.data.interval, params.featurize.price_column)
    periods = series_splits(series, params.featurize)
    test_rows = _save_and_score(results, scaler, validation, series, params, project, periods)
    scores = {cell: score_rows(rows) for cell, rows in test_rows.items()}
    spreads = {cell: intervals.score(rows, params.intervals.levels) for cell, rows in test_rows.items()}
    for r in results:
        _log_cell_run(r, scores[r.cell], spreads[r.cell])
    shutil.copytree(project.model_dir / winner.cell, project.best_model_dir)
    write_json(project.selection_file, {
        "cell": winner.cell, "hyperparameters": winner.best_hp, "val_loss": winner.best_val_loss,
        "n_params": winner.n_params, "chosen_on": CHOSEN_ON, "window": params.featurize.window})
    report = _comparison(results, scores, spreads, winner, null_validation_loss(validation, scaler),
                         params.intervals.levels)
    write_json(project.metrics_dir / "tune.json", {**report, "measured": tracking.measured("dvc repro", project.root)})
    write_json(project.metrics_dir / "test.json", {"model": winner.cell, "scores": scores[winner.cell]})
    best = Forecaster.load(project.best_model_dir)
    conditional = backtests.conditional(test_rows[winner.cell], params.intervals.levels)
    write_json(project.metrics_dir / "intervals.json", {
        "model": winner.cell, "levels": list(params.intervals.levels), "calibration": _calibration_summary(best),
        "test": spreads[winner.cell], "test_conditional": conditional})
    test = WindowSet.load(project.features_dir / "test.npz")
    _write_plots(project, results, scores, test_rows[winner.cell], winner.cell, report["null_val_loss"])
    _write_interval_plots(project, params, calibration_curve(best, validation, test), test_rows[winner.cell],
                          winner.cell, periods, conditional)
    _publish(project, report, scores[winner.cell], spreads[winner.cell], winner.cell, params.intervals.levels)
    _publish_conditional(conditional, winner.cell, periods)
    return report


def _save_and_score(results: list[CellResult], scaler: ReturnScaler, validation: WindowSet, series: dict,
                    params: Params, project: Paths, periods: Splits) -> dict[str, Any]:
    """Calibrate each cell's best forecaster on the validation period, save it, and forecast the
    test period with the saved copy."""
    shutil.rmtree(project.model_dir, ignore_errors=True)
    rows = {}
    for r in results:
        folder = project.model_dir / r.cell
        Forecaster(r.model, scaler).save(folder)
        forecaster = Forecaster.load(folder)  # calibrate and score exactly what register will ship
        forecaster.calibration = calibrate(forecaster, validation, params.intervals.levels,
                                           params.intervals.ewma_lambda, periods.validation_period,
                                           params.intervals.min_coverage_p, params.intervals.online)
        forecaster.calibration.save(folder)
        rows[r.cell] = served_period(forecaster, series, periods.test_start, periods.end)
    return rows


def _calibration_summary(forecaster: Forecaster) -> dict[str, Any]:
    c = forecaster.calibration
    return {"method": "split-conformal on |return - centre| / scale", "period": c.period, "rows": c.rows,
            "ewma_lambda": c.ewma_lambda, "network_weight": c.network_weight, "online": c.online,
            "garch": forecaster.scaler.garch, "quantiles": c.quantiles}


def _publish(project: Paths, report: dict[str, Any], winner_scores: dict, winner_spreads: dict, winner_cell: str,
             levels: tuple[float, ...]) -> None:
    import mlflow

    mlflow.log_metrics({**flat_metrics(winner_scores, "test"), **flat_metrics(winner_spreads, "test")})
    mlflow.log_metric("null_val_loss", report["null_val_loss"])
    mlflow.log_params({"winner_cell": winner_cell})
    mlflow.log_artifacts(str(project.plots_dir), "plots")
    mlflow.log_dict(report, "lstm_vs_gru.json")
    mlflow.log_text(comparison_table(report), "lstm_vs_gru.txt")
    log.info("\n%s", comparison_table(report))
    log.info("\n%s", format_table(winner_scores, f"Test period, winner {winner_cell.upper()} (chosen on validation)"))
    table = intervals.format_table(winner_spreads, levels, f"Test period, {winner_cell.upper()} intervals "
                                                           f"(calibrated on validation) beside the baselines")
    mlflow.log_text(table, "test_intervals.txt")
    log.info("\n%s", table)


def _publish_conditional(conditional: dict, winner_cell: str, periods: Splits) -> None:
    """The conditional coverage table to MLflow: metrics test_<method>_<level>_<what> and the text."""
    import mlflow

    mlflow.log_metrics(backtests.flat_metrics(conditional, "test"))
    table = backtests.format_conditional(conditional, f"Test period ({periods.test_start}..{periods.end}), "
                                                      f"{winner_cell.upper()}: coverage by regime and the backtests")
    mlflow.log_text(table, "test_conditional_coverage.txt")
    log.info("\n%s", table)


CHOSEN_ON = "validation loss (smallest model within tune.parsimony_tolerance of the lowest)"


def _log_cell_run(r: CellResult, scores: dict[str, dict[str, float]], spreads: dict[str, dict[str, float]]) -> None:
    """A nested run per cell's best model, so the MLflow UI can compare LSTM and GRU directly."""
    import mlflow

    with mlflow.start_run(run_name=f"best-{r.cell}", nested=True,
                          tags={"neuropredict.stage": "tune-best", "cell": r.cell}):
        mlflow.log_params(r.best_hp)
        mlflow.log_metrics({"val_loss": r.best_val_loss, "trials": r.trials, "n_params": r.n_params,
                            **flat_metrics(scores, "test"), **flat_metrics(spreads, "test")})


def _comparison(results: list[CellResult], scores: dict, spreads: dict, winner: CellResult,
                null_val_loss: float, levels: tuple[float, ...]) -> dict[str, Any]:
    """LSTM against GRU: validation loss (how the winner was chosen) and test figures (reported)."""
    report: dict[str, Any] = {"winner": winner.cell, "chosen_on": CHOSEN_ON, "null_val_loss": null_val_loss}
    for r in results:
        pooled = scores[r.cell]["_pooled"]
        report[r.cell] = {
            "val_loss": r.best_val_loss, "lowest_val_loss": r.lowest_val_loss, "n_params": r.n_params,
            "trials": r.trials,
            **{f"hp_{k}": v for k, v in r.best_hp.items() if k != "cell"},
            "test_mse": pooled["mse"], "test_persistence_mse": pooled["persistence_mse"],
            "test_drift_mse": pooled["drift_mse"], "test_skill": pooled["skill"],
            "test_mean_skill": pooled["mean_skill"], "test_max_dm_t": pooled["max_dm_t"],
            **{f"test_{k}_{intervals.label(p)}": spreads[r.cell]["_pooled"][f"{k}_{intervals.label(p)}"]
               for p in levels for k in ("coverage", "interval_score")},
        }
    symbols = [k for k in scores[results[0].cell] if not k.startswith("_")]
    report["test_per_symbol"] = {
        s: {"persistence_mse": scores[results[0].cell][s]["persistence_mse"],
            "drift_mse": scores[results[0].cell][s]["drift_mse"],
            **{f"{r.cell}_mse": scores[r.cell][s]["mse"] for r in results},
            **{f"{r.cell}_skill": scores[r.cell][s]["skill"] for r in results},
            **{f"{r.cell}_dm_t": scores[r.cell][s]["dm_t"] for r in results}}
        for s in symbols
    }
    return report


def comparison_table(report: dict[str, Any]) -> str:
    cells = [k for k in report if k in ("lstm", "gru")]
    lines = [f"LSTM vs GRU (winner: {report['winner'].upper()}, chosen on the {report['chosen_on']})",
             f"{'':<22}" + "".join(f"{c.upper():>12}" for c in cells)]
    lines.insert(1, f"validation loss of the null model (training mean and volatility): {report['null_val_loss']:.4f}")
    keys = ("n_params", "val_loss", "lowest_val_loss", "test_mse", "test_persistence_mse", "test_skill",
            "test_mean_skill", "test_max_dm_t", *[k for k in report[cells[0]] if k.startswith(("test_coverage",
                                                                                                "test_interval"))])
    for key in keys:
        lines.append(f"{key:<22}" + "".join(f"{report[c][key]:>12,}" if isinstance(report[c][key], int)
                                            else f"{report[c][key]:>12.4f}" for c in cells))
    lines.append(f"{'skill % by symbol':<22}" + "".join(f"{c.upper():>12}" for c in cells))
    for s, m in report["test_per_symbol"].items():
        lines.append(f"  {s:<20}" + "".join(f"{100 * m[f'{c}_skill']:>+12.2f}" for c in cells))
    return "\n".join(lines)


def _write_interval_plots(project: Paths, params: Params, curve, winner_rows, winner_cell: str,
                          periods: Splits, conditional: dict) -> None:
    levels = params.intervals.levels
    terciles = backtests.tercile_frame(conditional)
    terciles.to_csv(project.plots_dir / "coverage_by_tercile.csv", index=False)
    plots.coverage_by_tercile(terciles, len(winner_rows), project.plots_dir / "coverage_by_tercile.png",
                              f"Test period ({periods.test_start}..{periods.end}): coverage by volatility tercile")
    curve.to_csv(project.plots_dir / "calibration.csv", index=False)
    plots.calibration(curve, levels, len(winner_rows), project.plots_dir / "calibration.png",
                      f"Test period: coverage against nominal, {winner_cell.upper()} beside the baselines\n"
                      f"(each calibrated on {periods.validation_period})")
    plots.fan_chart(winner_rows, levels, project.plots_dir / "test_intervals.png",
                    f"Test period: {winner_cell.upper()} prediction intervals and the actual close")


def _write_plots(project: Paths, results: list[CellResult], scores: dict, winner_rows, winner_cell: str,
                 null_val_loss: float) -> None:
    project.plots_dir.mkdir(parents=True, exist_ok=True)
    symbols = [k for k in scores[results[0].cell] if not k.startswith("_")]
    skills = {r.cell: {s: scores[r.cell][s]["skill"] for s in symbols} for r in results}
    dm = {r.cell: {s: scores[r.cell][s]["dm_t"] for s in symbols} for r in results}
    plots.skill_by_symbol(skills, dm, project.plots_dir / "lstm_vs_gru.png",
                          "Test period: skill vs persistence per symbol, best LSTM and best GRU")
    plots.learning_curves({r.cell: r.history for r in results}, project.plots_dir / "learning_curves.png", null_val_loss)
    plots.predicted_vs_actual(winner_rows, project.plots_dir / "test_predictions.png",
                              f"Test period (last 60 days): {winner_cell.upper()} forecasts vs actual")
    pd.DataFrame([{"symbol": s, "model": c, "skill_pct": 100 * skills[c][s]} for c in skills for s in symbols]
                 ).to_csv(project.plots_dir / "lstm_vs_gru.csv", index=False)
    pd.DataFrame([{"cell": r.cell, "epoch": i + 1, "loss": lo, "val_loss": va}
                  for r in results for i, (lo, va) in enumerate(zip(r.history["loss"], r.history["val_loss"]))]
                 ).to_csv(project.plots_dir / "learning_curves.csv", index=False)
    out = winner_rows.assign(time=winner_rows["time"].astype(str))[["time", "symbol", "actual", "predicted", "persistence"]]
    out.to_csv(project.plots_dir / "test_predictions.csv", index=False)
