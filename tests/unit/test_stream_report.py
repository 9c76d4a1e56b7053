import pandas as pd

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
