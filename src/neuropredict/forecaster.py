"""A Keras model plus its fitted feature transform: raw price windows in, next prices out.

`Forecaster` is what serving, evaluation and the registry all use; `ForecasterModel` wraps it as
an MLflow pyfunc so `models:/stock-price-forecaster@production` alone carries everything.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from neuropredict.features import SCALER_FILE, ReturnScaler, make_windows

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

MODEL_FILE = "model.keras"
EVAL_BATCH = 4096  # fixed chunk so offline evaluation is bit-for-bit repeatable


class Forecaster:
    """Next-price forecasts from windows of the last W raw prices, via one compiled model call."""

    def __init__(self, model, scaler: ReturnScaler):
        import tensorflow as tf

        self.model = model
        self.scaler = scaler
        steps = scaler.window - 1
        # One trace for every batch size: a compiled call, not model.predict per message.
        self._call = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec((None, steps, 1), tf.float32)],
        )

    @property
    def window(self) -> int:
        return self.scaler.window

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

    def model_outputs(self, x: np.ndarray) -> np.ndarray:
        """The raw model call on a batch of features."""
        return self._call(x).numpy().reshape(-1)

    def features(self, windows: np.ndarray, symbols: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n, W) prices -> the model input and each row's (mean, sd): the shared feature function."""
        windows = np.asarray(windows, dtype=np.float64)
        if windows.ndim != 2 or windows.shape[1] != self.window:
            raise ValueError(f"expected windows of shape (n, {self.window}), got {windows.shape}")
        mu, sd = self.scaler.stats(symbols)
        return self.scaler.to_model_input(windows, mu, sd), mu, sd

    def predict_next(self, windows: np.ndarray, symbols: Sequence[str]) -> np.ndarray:
        """(n, W) prices and n symbols -> n next-price forecasts."""
        windows = np.asarray(windows, dtype=np.float64)
        x, mu, sd = self.features(windows, symbols)
        out = np.concatenate([self.model_outputs(x[lo:lo + EVAL_BATCH]) for lo in range(0, len(x), EVAL_BATCH)])
        return self.scaler.to_price(out, windows[:, -1], mu, sd)

    def drift(self, windows: np.ndarray, symbols: Sequence[str]) -> np.ndarray:
        """The drift baseline: last price times exp(the symbol's mean training return)."""
        mu, _ = self.scaler.stats(symbols)
        return np.asarray(windows)[:, -1] * np.exp(mu)


def forecast_period(forecaster: Forecaster, series: dict[str, pd.Series], start: str,
                    end: str | None = None) -> pd.DataFrame:
    """One row per target time in [start, end]: actual, model forecast and the naive baselines.

    Windows come from the raw series with the forecaster's own W, so models with different
    windows are scored on exactly the same target rows.
    """
    rows = make_windows(series, forecaster.window, forecaster.scaler.session_reset)
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
