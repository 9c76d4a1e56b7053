"""A Keras model plus its fitted feature transform and interval calibration: raw price windows
in, next prices and their prediction intervals out.

`Forecaster` is what serving, evaluation and the registry all use; `ForecasterModel` wraps it as
an MLflow pyfunc so `models:/stock-price-forecaster@production` alone carries everything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from neuropredict import adaptive, intervals
from neuropredict.features import SCALER_FILE, ReturnScaler, WindowSet, make_windows
from neuropredict.intervals import Calibration, Spread

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
EVAL_BATCH = 4096  # fixed chunk so offline evaluation is bit-for-bit repeatable


@dataclass(frozen=True)
class ModelInput:
    """A batch of windows turned into the model's input, with what turns outputs back into prices."""

    x: np.ndarray     # (n, W-1, 1) standardised log returns
    mu: np.ndarray    # (n,) each row's training mean return ...
    sd: np.ndarray    # ... and standard deviation
    last: np.ndarray  # (n,) the last real price of each window
    windows: np.ndarray  # (n, W) the raw prices (the baselines' volatility reads them)
    garch: tuple[np.ndarray, np.ndarray] | None = None  # each row's GARCH(1,1) (α, β); None: not fitted

    def __len__(self) -> int:
        return len(self.last)


@dataclass(frozen=True)
class Forecast:
    """Next prices, and the bounds of every calibrated interval (empty for a model without)."""

    price: np.ndarray
    bounds: dict[str, np.ndarray]  # intervals.column(method, side, level) -> prices


class Forecaster:
    """Next-price forecasts from windows of the last W raw prices, via one compiled model call.

    The one forecast path: `prepare` (the shared feature function) then `forecast_chunks`
    (model calls, optionally on a helper thread so the caller's work on one chunk overlaps the
    call of the next). The worker, the pyfunc, offline evaluation and parity all go through it.
    """

    def __init__(self, model, scaler: ReturnScaler, calibration: Calibration | None = None):
        import tensorflow as tf

        self.model = model
        self.scaler = scaler
        self.calibration = calibration  # None: point forecasts only (a model saved before intervals)
        self.model_seconds = 0.0  # time spent in model calls (where the serving time goes)
        steps = scaler.window - 1
        # One trace for every batch size: a compiled call, not model.predict per message.
        self._call = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec((None, steps, 1), tf.float32)],
        )

    @property
    def window(self) -> int:
        return self.scaler.window

    @property
    def intraday(self) -> bool:
        """Trained on intraday bars: its windows and forecasts stay within a session."""
        return self.scaler.session_reset

    @classmethod
    def load(cls, folder: Path) -> Forecaster:
        import keras

        folder = Path(folder)
        model = keras.saving.load_model(folder / MODEL_FILE, compile=False)
        return cls(model, ReturnScaler.load(folder / SCALER_FILE), Calibration.load(folder))

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save(folder / MODEL_FILE)
        self.scaler.save(folder / SCALER_FILE)
        if self.calibration is not None:
            self.calibration.save(folder)

    @property
    def interval_fields(self) -> list[str]:
        """The model's bounds, as prediction messages name them: lower_80, upper_80, ..."""
        if self.calibration is None:
            return []
        return [intervals.column("model", side, level) for level in self.calibration.levels
                for side in ("lower", "upper")]

    def prepare(self, windows: np.ndarray, symbols: Sequence[str]) -> ModelInput:
        """(n, W) raw prices of the given symbols -> the model input (THE feature function)."""
        windows = np.asarray(windows, dtype=np.float64)
        if windows.ndim != 2 or windows.shape[1] != self.window:
            raise ValueError(f"expected windows of shape (n, {self.window}), got {windows.shape}")
        mu, sd = self.scaler.stats(symbols)
        return ModelInput(self.scaler.to_model_input(windows, mu, sd), mu, sd, windows[:, -1], windows,
                          self.scaler.garch_params(symbols))

    def forecast_chunks(self, batch: ModelInput, chunk_rows: int, pool: Executor | None = None,
                        methods: Sequence[str] = intervals.SPREAD_METHODS) -> Iterator[tuple[slice, Forecast]]:
        """(rows, forecast) chunk by chunk, with the bounds of `methods`. With a pool, chunk k+1 is
        forecast on it (the model call, which releases the GIL, and the arithmetic after it) while
        the caller handles chunk k."""
        chunks = [slice(lo, min(lo + chunk_rows, len(batch))) for lo in range(0, len(batch), max(1, chunk_rows))]
        if not chunks:
            return
        call = pool.submit if pool is not None else _call_now
        pending = call(self._forecast_rows, batch, chunks[0], methods)
        for k, rows in enumerate(chunks):
            forecast = pending.result()
            if k + 1 < len(chunks):
                pending = call(self._forecast_rows, batch, chunks[k + 1], methods)
            yield rows, forecast

    def _forecast_rows(self, batch: ModelInput, rows: slice, methods: Sequence[str]) -> Forecast:
        outputs = self._outputs(batch.x[rows])
        price = self.scaler.to_price(outputs[:, 0], batch.last[rows], batch.mu[rows], batch.sd[rows])
        if self.calibration is None:
            return Forecast(price, {})
        spreads = self.spreads(batch, rows, outputs)
        return Forecast(price, self.calibration.bounds({m: spreads[m] for m in methods if m in spreads},
                                                       batch.last[rows]))

    def spreads(self, batch: ModelInput, rows: slice, outputs: np.ndarray, ewma_lambda: float | None = None,
                network_weight: float | None = None) -> dict[str, Spread]:
        """Each method's distribution of the next log return: the model's location and scale
        (from standardised units; the scale blended with EWMA's, see `calibrate`) beside the
        baselines'. λ and the blend weight: the calibration's, unless given."""
        mu, sd = batch.mu[rows], batch.sd[rows]
        lam = self.calibration.ewma_lambda if ewma_lambda is None else ewma_lambda
        w = self.calibration.network_weight if network_weight is None else network_weight
        garch = None if batch.garch is None else (batch.garch[0][rows], batch.garch[1][rows])
        baselines = intervals.baseline_spreads(batch.windows[rows], sd, lam, garch)
        network = sd * outputs[:, 1]
        scale = np.sqrt(w * network**2 + (1.0 - w) * baselines["ewma"].scale ** 2)
        return {"model": Spread(mu + sd * outputs[:, 0], scale), **baselines}

    def forecast(self, windows: np.ndarray, symbols: Sequence[str]) -> Forecast:
        """(n, W) prices and n symbols -> next prices and interval bounds."""
        batch = self.prepare(windows, symbols)
        parts = list(self.forecast_chunks(batch, EVAL_BATCH))
        price = np.concatenate([f.price for _, f in parts]) if parts else np.empty(0)
        keys = parts[0][1].bounds if parts else {}
        return Forecast(price, {k: np.concatenate([f.bounds[k] for _, f in parts]) for k in keys})

    @property
    def live_keys(self) -> tuple[tuple[str, float], ...]:
        """The intervals a worker scores live for this model (none without a calibration)."""
        return intervals.live_keys(self.calibration)

    def bounds_matrix(self, forecast: Forecast) -> np.ndarray:
        """(n, 2 per live key) bounds, in the order of intervals.bound_columns(live_keys)."""
        columns = intervals.bound_columns(self.live_keys)
        return (np.column_stack([forecast.bounds[c] for c in columns]) if columns
                else np.empty((len(forecast.price), 0)))

    def forecast_row(self, window: np.ndarray, symbol: str) -> tuple[float, np.ndarray, tuple]:
        """One window's forecast, its live bounds and their keys (a rebuilt symbol's open forecast)."""
        forecast = self.forecast(np.asarray(window)[None, :], [symbol])
        if adaptive.is_online(self.calibration):  # made again: with the registered quantile
            forecast = Forecast(forecast.price, adaptive.with_static(forecast.bounds, self.calibration.levels))
        return float(forecast.price[0]), self.bounds_matrix(forecast)[0], self.live_keys

    def predict_next(self, windows: np.ndarray, symbols: Sequence[str]) -> np.ndarray:
        """(n, W) prices and n symbols -> n next-price forecasts."""
        return self.forecast(windows, symbols).price

    def outputs(self, windows: np.ndarray, symbols: Sequence[str]) -> tuple[ModelInput, np.ndarray]:
        """The model's raw (n, 2) outputs, in chunks (calibration reads them)."""
        batch = self.prepare(windows, symbols)
        out = [self._outputs(batch.x[lo:lo + EVAL_BATCH]) for lo in range(0, len(batch), EVAL_BATCH)]
        return batch, np.concatenate(out) if out else np.empty((0, 2))

    def warm_up(self) -> None:
        """Trace the compiled call once so the first real batch does not pay for it."""
        self.predict_next(np.full((2, self.window), 100.0), ["WARMUP", "WARMUP"])

    def drift(self, windows: np.ndarray, symbols: Sequence[str]) -> np.ndarray:
        """The drift baseline: last price times exp(the symbol's mean training return)."""
        mu, _ = self.scaler.stats(symbols)
        return np.asarray(windows)[:, -1] * np.exp(mu)

    def _outputs(self, x: np.ndarray) -> np.ndarray:
        """The raw model call on a batch of features, timed (model_seconds)."""
        began = time.perf_counter()
        out = self._call(x).numpy()
        self.model_seconds += time.perf_counter() - began
        return out.reshape(len(x), -1)


class _Done:
    """A finished result with the Future interface, for calls made in the caller's thread."""

    def __init__(self, value):
        self._value = value

    def result(self):
        return self._value


def _call_now(fn, *args) -> _Done:
    return _Done(fn(*args))


def limit_threads(threads: int) -> None:
    """On a few cores a batched call on one thread leaves the other to Kafka's IO; TF's spinning
    thread pool otherwise competes with the producer (measured: bench/serving.py). 0: TF decides."""
    if threads <= 0:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already ran in this process (tests, notebooks): keep its pool
        log.debug("TensorFlow already initialised; thread settings unchanged")


def forecast_period(forecaster: Forecaster, series: dict[str, pd.Series], start: str,
                    end: str | None = None) -> pd.DataFrame:
    """One row per target time in [start, end]: actual, model forecast and the naive baselines.

    Windows come from the raw series with the forecaster's own W, so models with different
    windows are scored on exactly the same target rows.
    """
    rows = make_windows(series, forecaster.window, forecaster.intraday)
    keep = rows.target_times >= np.datetime64(pd.Timestamp(start))
    if end is not None:  # the whole end day (intraday bars are later than its midnight)
        keep &= rows.target_times < np.datetime64(pd.Timestamp(end) + pd.Timedelta(days=1))
    rows = rows.select(keep)
    forecast = forecaster.forecast(rows.windows, rows.symbols)
    return pd.DataFrame({
        "symbol": rows.symbols,
        "time": rows.target_times,
        "last": rows.windows[:, -1],
        "actual": rows.targets,
        "predicted": forecast.price,
        "persistence": rows.windows[:, -1],
        "drift": forecaster.drift(rows.windows, rows.symbols),
        **forecast.bounds,
    })


def served_period(forecaster: Forecaster, series: dict[str, pd.Series], start: str,
                  end: str | None = None) -> pd.DataFrame:
    """forecast_period with the intervals a worker serves from `start` on: adaptive where the
    calibration is (adaptive.serve; the static ones then as `conformal`)."""
    return adaptive.serve(forecast_period(forecaster, series, start, end), forecaster.calibration)


NETWORK_WEIGHTS = (1.0, 0.75, 0.5, 0.25, 0.0)  # the blends of network and EWMA scale tried on validation


def calibrate(forecaster: Forecaster, rows: WindowSet, levels: Sequence[float], ewma_lambda: float,
              period: str, min_coverage_p: float = 0.0, online: bool = False) -> Calibration:
    """Conformal quantiles of every method on `rows` (the validation period: never the test year).

    The model's scale blends the network's with EWMA's, sqrt(w · network² + (1 - w) · EWMA²): of
    the weights whose every symbol's coverage passes the binomial test (p >= min_coverage_p) on
    these rows, the one with the lowest interval score. The network's scale is the sharper, but
    it adapts to a symbol's new volatility regime more slowly than EWMA (on the bundled data,
    network alone: AAPL 90 % inside the 80 % interval of 2023)."""
    batch, outputs = forecaster.outputs(rows.windows, rows.symbols)
    returns = np.log(rows.targets / batch.last)
    tried = []
    for w in NETWORK_WEIGHTS:
        spreads = forecaster.spreads(batch, slice(None), outputs, ewma_lambda, w)
        fitted = Calibration.fit(spreads, returns, levels, ewma_lambda, period, w, online)
        least_p, score = intervals.blend_fit(spreads["model"], returns, rows.symbols, fitted)
        tried.append((least_p >= min_coverage_p, -score, least_p, fitted))
        log.info("calibration: network weight %.2f: least per-symbol coverage p %.3g, interval score %.3f %%",
                 w, least_p, score)
    passing = [t for t in tried if t[0]]
    chosen = max(passing, key=lambda t: t[1]) if passing else max(tried, key=lambda t: t[2])
    return chosen[3]


CURVE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def calibration_curve(forecaster: Forecaster, validation: WindowSet, test: WindowSet) -> pd.DataFrame:
    """Coverage (%) on `test` of every method at nominal levels from 10 % to 99 % (and the
    configured ones), each calibrated on `validation` as the served intervals are (the same blend)."""
    lam = forecaster.calibration.ewma_lambda
    nominal = sorted({*CURVE_LEVELS, *forecaster.calibration.levels})
    nominal = [p for p in nominal if np.ceil((len(validation) + 1) * p) <= len(validation)]
    served = forecaster.calibration
    batch, outputs = forecaster.outputs(validation.windows, validation.symbols)
    fitted = Calibration.fit(forecaster.spreads(batch, slice(None), outputs), np.log(validation.targets / batch.last),
                             nominal, lam, served.period, served.network_weight)
    batch, outputs = forecaster.outputs(test.windows, test.symbols)
    bounds = fitted.bounds(forecaster.spreads(batch, slice(None), outputs, lam), batch.last)
    curve: dict[str, list[float]] = {"nominal": [100 * p for p in nominal]}
    for method in [m for m in intervals.SPREAD_METHODS if m in fitted.quantiles]:
        curve[method] = [100 * float(np.mean((test.targets >= bounds[intervals.column(method, "lower", p)])
                                             & (test.targets <= bounds[intervals.column(method, "upper", p)])))
                         for p in nominal]
    return pd.DataFrame(curve)


# ---- MLflow pyfunc ----

try:
    import mlflow.pyfunc as _pyfunc

    _PythonModel = _pyfunc.PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency
    _PythonModel = object


class ForecasterModel(_PythonModel):
    """pyfunc: a DataFrame of `symbol` and `prices` (the last W prices) -> `predicted_price`."""

    def load_context(self, context) -> None:
        folder = Path(context.artifacts["forecaster"])
        self.forecaster = Forecaster.load(folder)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        windows = np.stack([np.asarray(p, dtype=np.float64) for p in model_input["prices"]])
        symbols = [str(s) for s in model_input["symbol"]]
        forecast = self.forecaster.forecast(windows, symbols)
        fields = self.forecaster.interval_fields
        return pd.DataFrame({"predicted_price": forecast.price, **{k: forecast.bounds[k] for k in fields}})


def input_example(forecaster: Forecaster, series: dict[str, pd.Series], n: int = 2) -> pd.DataFrame:
    symbol = next(iter(series))
    prices = series[symbol].to_numpy(np.float64)
    w = forecaster.window
    return pd.DataFrame({"symbol": [symbol] * n,
                         "prices": [prices[-w - i:len(prices) - i].tolist() for i in range(n)]})
