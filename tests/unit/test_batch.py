"""A batch's forecast rows: dealt out a round at a time, so a chunk spans as many symbols as it can."""

import numpy as np

from neuropredict.stream.batch import Batch
from neuropredict.stream.state import Advance


def _step(owner_positions: list[int], first_price: float) -> Advance:
    n = len(owner_positions)
    windows = first_price + np.arange(n)[:, None] + np.zeros((n, 3))  # window k ends at first_price + k
    return Advance(np.arange(max(owner_positions) + 1), np.zeros(0), np.zeros(0), np.zeros(0), [], windows,
                   np.asarray(owner_positions))


def test_owners_go_round_by_round_each_symbol_in_order_and_windows_follow():
    batch = Batch()
    batch.by_symbol.update({"AAA": [0, 2, 4, 6], "BBB": [1, 3], "CCC": [5, 7, 8]})
    batch.steps = {"AAA": _step([1, 2, 3], 100.0), "BBB": _step([0, 1], 200.0), "CCC": _step([0, 1, 2], 300.0)}

    owners, windows = batch.forecast_rows()

    # round 1: each symbol's first forecast tick, in poll order; round 2: the seconds; then AAA's and CCC's thirds
    assert owners.tolist() == [1, 2, 5, 3, 4, 7, 6, 8]
    assert windows[:, -1].tolist() == [200.0, 100.0, 300.0, 201.0, 101.0, 301.0, 102.0, 302.0]


def test_a_batch_without_full_windows_has_no_owners():
    batch = Batch()
    batch.by_symbol.update({"AAA": [0]})
    batch.steps = {}
    assert batch.forecast_rows()[0].tolist() == []
