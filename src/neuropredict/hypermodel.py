"""The keras-tuner search space: a recurrent forecaster of the next standardised log return."""

from __future__ import annotations

import keras
import keras_tuner as kt

from neuropredict.config import TuneParams

CELLS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}


def seed_everything(seed: int) -> None:
    """Same params, same result: seeded Python/NumPy/TF and deterministic TF kernels."""
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


class ForecasterHyperModel(kt.HyperModel):
    """One recurrent cell type; units, depth, dropout and learning rate come from `hp`."""

    def __init__(self, cell: str, steps: int, space: TuneParams):
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
        if steps < 2:
            raise ValueError(f"steps (window - 1) must be >= 2, got {steps}: raise featurize.window")
        super().__init__(name=f"forecaster-{cell}")
        self.cell, self.steps, self.space = cell, steps, space

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        s = self.space
        cell = hp.Fixed("cell", self.cell)
        units = hp.Choice("units", list(s.units), default=s.units[0])
        layers = hp.Choice("layers", list(s.layers), default=s.layers[0])
        dropout = _float(hp, "dropout", s.dropout, log=False)
        learning_rate = _float(hp, "learning_rate", s.learning_rate, log=True)
        return build_model(cell, self.steps, units, layers, dropout, learning_rate)


def _float(hp: kt.HyperParameters, name: str, bounds: tuple[float, float], log: bool) -> float:
    lo, hi = bounds
    if lo == hi:
        return hp.Fixed(name, lo)
    return hp.Float(name, lo, hi, sampling="log" if log else "linear", default=lo)


def build_model(cell: str, steps: int, units: int, layers: int, dropout: float,
                learning_rate: float) -> keras.Model:
    """(batch, steps, 1) standardised returns -> (batch, 1) next standardised return."""
    stack = [keras.Input((steps, 1), name="returns")]
    for i in range(layers):
        stack.append(CELLS[cell](units, dropout=dropout, return_sequences=i < layers - 1,
                                 name=f"{cell}_{i + 1}"))
    stack.append(keras.layers.Dense(1, name="next_return"))
    model = keras.Sequential(stack, name=f"{cell}_forecaster")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    return model
