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
