"""The stream's data-quality rules: the same thresholds as the validate stage."""

import numpy as np

from neuropredict.stream.rules import NEW_LEVEL, Guard, TickRules, reason_code

RULES = TickRules(max_abs_log_return=0.4, level_shift_ticks=3)


def _check(guard, rows, symbol="AAPL"):
    times = np.array([t for t, _ in rows], dtype=float)
    prices = np.array([p for _, p in rows], dtype=float)
    verdicts = guard.check(symbol, times, prices, [f"t{t:g}" for t, _ in rows], RULES)
    return [None] * len(rows) if verdicts is None else verdicts


def test_ordinary_ticks_pass_in_one_vectorised_step():
    g = Guard()
    assert g.check("AAPL", np.array([1.0, 2.0, 3.0]), np.array([100.0, 101.0, 99.0]), ["a", "b", "c"], RULES) is None
    assert (g.last_time, g.last_price, g.last_timestamp) == (3.0, 99.0, "c")


def test_a_thousandfold_price_is_rejected_and_does_not_become_the_reference():
    g = Guard()
    verdicts = _check(g, [(1, 242.65), (2, 242649.99), (3, 243.0)])
    assert verdicts[0] is None and verdicts[2] is None
    assert reason_code(verdicts[1]) == "jump" and "242650" in verdicts[1] and "max_abs_log_return = 0.4" in verdicts[1]
    assert g.last_price == 243.0 and g.level == 0


def test_late_and_repeated_timestamps_are_rejected_with_their_own_reasons():
    g = Guard()
    verdicts = _check(g, [(10, 100.0), (5, 100.0), (10, 100.5), (11, 101.0)])
    assert verdicts[0] is None and verdicts[3] is None
    assert reason_code(verdicts[1]) == "out_of_order" and "before AAPL's last accepted tick (t10)" in verdicts[1]
    assert reason_code(verdicts[2]) == "duplicate"


def test_a_lasting_new_level_is_accepted_after_n_agreeing_ticks():
    g = Guard()
    verdicts = _check(g, [(1, 400.0), (2, 100.0), (3, 101.0), (4, 100.5), (5, 101.0)])  # a 4:1 split
    assert verdicts[0] is None
    assert [reason_code(v) for v in verdicts[1:3]] == ["jump", "jump"]
    assert "2 more tick(s)" in verdicts[1] and "1 more tick(s)" in verdicts[2]
    assert verdicts[3] == NEW_LEVEL and verdicts[4] is None
    assert g.level == 1 and g.last_price == 101.0


def test_scattered_spikes_never_add_up_to_a_new_level():
    g = Guard()
    verdicts = _check(g, [(1, 100.0), (2, 1000.0), (3, 10.0), (4, 1000.0), (5, 10.0), (6, 100.5)])
    assert all(reason_code(v) == "jump" for v in verdicts[1:5])  # they disagree with one another
    assert verdicts[5] is None and g.level == 0


def test_a_normal_tick_between_spikes_resets_the_count():
    g = Guard()
    verdicts = _check(g, [(1, 100.0), (2, 400.0), (3, 400.0), (4, 100.0), (5, 400.0), (6, 400.0)])
    assert verdicts[3] is None and all(reason_code(v) == "jump" for v in (verdicts[4], verdicts[5]))
