import keras_tuner as kt
import numpy as np
import pytest

from neuropredict.hypermodel import MIN_SCALE, ForecasterHyperModel, gaussian_nll
from neuropredict.settings.schema import TuneParams

SPACE = TuneParams(units=(4, 8), layers=(1, 2), dropout=(0.0, 0.2), learning_rate=(1e-3, 1e-2))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_builds_each_cell_with_defaults_and_overrides(cell):
    hm = ForecasterHyperModel(cell, steps=9, space=SPACE)
    hp = kt.HyperParameters()
    model = hm.build(hp)
    assert hp.values["cell"] == cell and hp.values["units"] == 4 and hp.values["layers"] == 1
    assert model.output_shape == (None, 2)  # the next return's location and scale
    out = model.predict(np.zeros((3, 9, 1), np.float32), verbose=0)
    np.testing.assert_allclose(out[:, 1], 1 + MIN_SCALE, rtol=1e-5)  # starts at the training volatility
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
    nll = [("big", -0.1000, 50_000), ("small", -0.0999, 2_000)]  # a negative log-likelihood loss
    assert parsimonious(nll, tolerance=0.002) == "small" and parsimonious(nll, tolerance=0.0) == "big"


def test_the_loss_is_the_gaussian_nll_whose_null_is_half_the_mean_square():
    rng = np.random.default_rng(0)
    y = rng.normal(0, 2.0, 20_000).astype(np.float32)

    def loss(location, scale):
        pred = np.column_stack([np.full_like(y, location), np.full_like(y, scale)])
        return float(gaussian_nll(y[:, None], pred))

    assert loss(0.0, 1.0) == pytest.approx(0.5 * np.mean(y.astype(np.float64) ** 2), rel=1e-5)
    scales = [1.0, 1.5, 2.0, 2.5, 3.0]
    assert scales[int(np.argmin([loss(0.0, s) for s in scales]))] == 2.0  # lowest at the true scale
