import pandas as pd
import pytest

from neuropredict.stream_report import join


def test_each_forecast_meets_the_next_tick_of_its_symbol_and_duplicates_count_once():
    ticks = pd.DataFrame([
        (0, 0, "A", "2024-01-02 16:00:00", 10.0), (0, 1, "B", "2024-01-02 16:00:00", 50.0),
        (0, 2, "A", "2024-01-03 16:00:00", 11.0), (0, 3, "B", "2024-01-03 16:00:00", 49.0),
        (0, 4, "A", "2024-01-04 16:00:00", 12.0),
    ], columns=["partition", "offset", "symbol", "timestamp", "price"])
    preds = [
        {"symbol": "A", "input_partition": 0, "input_offset": 0, "actual_price": 10.0, "predicted_price": 10.5, "model_version": "1"},
        {"symbol": "A", "input_partition": 0, "input_offset": 0, "actual_price": 10.0, "predicted_price": 10.5, "model_version": "1"},
        {"symbol": "B", "input_partition": 0, "input_offset": 1, "actual_price": 50.0, "predicted_price": 50.5, "model_version": "1"},
        {"symbol": "A", "input_partition": 0, "input_offset": 2, "actual_price": 11.0, "predicted_price": 11.2, "model_version": "2"},
        {"symbol": "A", "input_partition": 0, "input_offset": 4, "actual_price": 12.0, "predicted_price": 12.1, "model_version": "2"},
    ]
    rows = join(ticks, preds)
    assert list(rows["symbol"]) == ["A", "A", "B"]  # the last forecast of A has no next tick yet
    a = rows[rows["symbol"] == "A"]
    assert list(a["actual"]) == [11.0, 12.0] and list(a["predicted"]) == [10.5, 11.2]
    assert list(a["persistence"]) == [10.0, 11.0] and list(a["model_version"]) == ["1", "2"]
    b = rows[rows["symbol"] == "B"].iloc[0]
    assert (b["actual"], b["persistence"]) == (49.0, 50.0)
    assert b["time"] == pd.Timestamp("2024-01-03 16:00:00")


def test_intraday_forecasts_are_not_scored_across_sessions():
    ticks = pd.DataFrame([
        (0, 0, "A", "2026-03-20 15:58:00", 10.0), (0, 1, "A", "2026-03-20 15:59:00", 11.0),
        (0, 2, "A", "2026-03-23 09:30:00", 15.0),
    ], columns=["partition", "offset", "symbol", "timestamp", "price"])
    preds = [{"symbol": "A", "input_partition": 0, "input_offset": o, "actual_price": p, "predicted_price": p,
              "model_version": "1"} for o, p in ((0, 10.0), (1, 11.0))]
    assert len(join(ticks, preds)) == 2
    same_session = join(ticks, preds, intraday=True)
    assert list(same_session["actual"]) == [11.0]  # the overnight gap is not a one-step forecast


def test_expected_forecasts_count_warmup_per_symbol_or_per_session():
    from neuropredict.messages import Tick
    from neuropredict.producer import expected_forecasts

    day1 = [Tick(f"2026-03-20 09:{m:02d}:00", "A", 1.0) for m in range(30, 40)]
    day2 = [Tick(f"2026-03-23 09:{m:02d}:00", "A", 1.0) for m in range(30, 40)]
    assert expected_forecasts(day1 + day2, window=5, session_reset=False) == 20 - 4
    assert expected_forecasts(day1 + day2, window=5, session_reset=True) == 2 * (10 - 4)


def test_streamed_intervals_are_scored_on_the_rows_that_carry_them():
    """Version 1 (no intervals) then version 2 with them: only version 2's rows count."""
    from neuropredict.stream_report import interval_scores

    ticks = pd.DataFrame([(0, i, "A", f"2024-01-{i + 2:02d} 16:00:00", 100.0 + i) for i in range(5)],
                         columns=["partition", "offset", "symbol", "timestamp", "price"])
    preds = [{"symbol": "A", "input_partition": 0, "input_offset": 0, "actual_price": 100.0,
              "predicted_price": 100.0, "model_version": "1"}]
    preds += [{"symbol": "A", "input_partition": 0, "input_offset": i, "actual_price": 100.0 + i,
               "predicted_price": 100.0 + i, "model_version": "2", "lower_80": 99.0 + i, "upper_80": upper}
              for i, upper in ((1, 101.5), (2, 103.5), (3, 103.0))]  # next prices 102, 103, 104
    rows = join(ticks, preds)
    assert len(rows) == 4 and rows["lower_80"].isna().sum() == 1
    scores = interval_scores(rows)["A"]
    assert scores["n"] == 3 and scores["coverage_80"] == pytest.approx(100 / 3)  # only 103 lies inside [101, 103.5]
    assert "ewma_coverage_80" not in scores  # the stream carries the model's bounds only
