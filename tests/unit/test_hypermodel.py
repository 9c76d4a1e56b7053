import keras_tuner as kt
import numpy as np
import pytest

from neuropredict.config import TuneParams
from neuropredict.hypermodel import ForecasterHyperModel

SPACE = TuneParams(units=(4, 8), layers=(1, 2), dropout=(0.0, 0.2), learning_rate=(1e-3, 1e-2))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_builds_each_cell_with_defaults_and_overrides(cell):
    hm = ForecasterHyperModel(cell, steps=9, space=SPACE)
    hp = kt.HyperParameters()
    model = hm.build(hp)
    assert hp.values["cell"] == cell and hp.values["units"] == 4 and hp.values["layers"] == 1
    assert model.output_shape == (None, 1)
    assert model.predict(np.zeros((3, 9, 1), np.float32), verbose=0).shape == (3, 1)
    hp2 = kt.HyperParameters()
    hp2.Fixed("layers", 2)
    deep = hm.build(hp2)
    assert sum(cell in layer.name for layer in deep.layers) == 2


def test_rejects_unknown_cell_and_too_short_windows():
    with pytest.raises(ValueError, match="cell must be one of"):
        ForecasterHyperModel("rnn", 9, SPACE)
    with pytest.raises(ValueError, match="raise featurize.window"):
        ForecasterHyperModel("gru", 1, SPACE)


def test_parsimony_picks_the_smallest_model_within_tolerance_of_the_lowest_loss():
    from neuropredict.tuning import parsimonious

    trials = [("big", 0.8977, 50_000), ("small", 0.8990, 2_000), ("tiny-but-worse", 0.9100, 100)]
    assert parsimonious(trials, tolerance=0.002) == "small"
    assert parsimonious(trials, tolerance=0.0) == "big"
    assert parsimonious([("a", 0.9, 10), ("b", 0.899, 10)], tolerance=0.01) == "b"  # a tie in size: lower loss
