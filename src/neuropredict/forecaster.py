"""A Keras model plus its fitted feature transform: raw price windows in, next prices out.

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

from neuropredict.features import SCALER_FILE, ReturnScaler, make_windows

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

    def __len__(self) -> int:
        return len(self.last)


class Forecaster:
    """Next-price forecasts from windows of the last W raw prices, via one compiled model call.

    The one forecast path: `prepare` (the shared feature function) then `forecast_chunks`
    (model calls, optionally on a helper thread so the caller's work on one chunk overlaps the
    call of the next). The worker, the pyfunc, offline evaluation and parity all go through it.
    """

    def __init__(self, model, scaler: ReturnScaler):
        import tensorflow as tf

        self.model = model
        self.scaler = scaler
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
        return cls(model, ReturnScaler.load(folder / SCALER_FILE))

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save(folder / MODEL_FILE)
        self.scaler.save(folder / SCALER_FILE)

    def prepare(self, windows: np.ndarray, symbols: Sequence[str]) -> ModelInput:
        """(n, W) raw prices of the given symbols -> the model input (THE feature function)."""
        windows = np.asarray(windows, dtype=np.float64)
        if windows.ndim != 2 or windows.shape[1] != self.window:
            raise ValueError(f"expected windows of shape (n, {self.window}), got {windows.shape}")
        mu, sd = self.scaler.stats(symbols)
        return ModelInput(self.scaler.to_model_input(windows, mu, sd), mu, sd, windows[:, -1])

    def forecast_chunks(self, batch: ModelInput, chunk_rows: int,
                        pool: Executor | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        """(rows, next prices) chunk by chunk. With a pool, the call for chunk k+1 runs on it
        while the caller handles chunk k (TensorFlow releases the GIL during the call)."""
        bounds = [slice(lo, min(lo + chunk_rows, len(batch))) for lo in range(0, len(batch), max(1, chunk_rows))]
        if not bounds:
            return
        call = pool.submit if pool is not None else _call_now
        pending = call(self._outputs, batch.x[bounds[0]])
        for k, rows in enumerate(bounds):
            outputs = pending.result()
            if k + 1 < len(bounds):
                pending = call(self._outputs, batch.x[bounds[k + 1]])
            yield rows, self.scaler.to_price(outputs, batch.last[rows], batch.mu[rows], batch.sd[rows])

    def predict_next(self, windows: np.ndarray, symbols: Sequence[str]) -> np.ndarray:
        """(n, W) prices and n symbols -> n next-price forecasts."""
        batch = self.prepare(windows, symbols)
        out = np.empty(len(batch))
        for rows, prices in self.forecast_chunks(batch, EVAL_BATCH):
            out[rows] = prices
        return out

    def warm_up(self) -> None:
        """Trace the compiled call once so the first real batch does not pay for it."""
        self.predict_next(np.full((2, self.window), 100.0), ["WARMUP", "WARMUP"])

    def drift(self, windows: np.ndarray, symbols: Sequence[str]) -> np.ndarray:
        """The drift baseline: last price times exp(the symbol's mean training return)."""
        mu, _ = self.scaler.stats(symbols)
        return np.asarray(windows)[:, -1] * np.exp(mu)

    def _outputs(self, x: np.ndarray) -> np.ndarray:
        """The raw model call on a batch of features (no other Python work: it may run on a helper thread)."""
        began = time.perf_counter()
        out = self._call(x).numpy().reshape(-1)
        self.model_seconds += time.perf_counter() - began
        return out


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
    return pd.DataFrame({
        "symbol": rows.symbols,
        "time": rows.target_times,
        "last": rows.windows[:, -1],
        "actual": rows.targets,
        "predicted": forecaster.predict_next(rows.windows, rows.symbols),
        "persistence": rows.windows[:, -1],
        "drift": forecaster.drift(rows.windows, rows.symbols),
    })


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
        return pd.DataFrame({"predicted_price": self.forecaster.predict_next(windows, symbols)})


def input_example(forecaster: Forecaster, series: dict[str, pd.Series], n: int = 2) -> pd.DataFrame:
    symbol = next(iter(series))
    prices = series[symbol].to_numpy(np.float64)
    w = forecaster.window
    return pd.DataFrame({"symbol": [symbol] * n,
                         "prices": [prices[-w - i:len(prices) - i].tolist() for i in range(n)]})
