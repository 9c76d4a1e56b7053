import pytest

from neuropredict import messages
from neuropredict.messages import Tick, encode_prediction, encode_tick, parse_tick


def test_seed_format_parses_and_extra_fields_are_allowed():
    tick = parse_tick(b'{"timestamp": "2025-02-27 21:54:55", "symbol": "AAPL", "price": 242.08, "volume": 10}')
    assert tick == Tick("2025-02-27 21:54:55", "AAPL", 242.08)
    assert parse_tick(encode_tick("2025-02-27 21:54:55", "MSFT", 400)) == Tick("2025-02-27 21:54:55", "MSFT", 400.0)


@pytest.mark.parametrize("raw, reason", [
    (None, "empty message"),
    (b"hello", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"symbol": "AAPL", "price": 1.0}', "missing field(s): timestamp"),
    (b'{"timestamp": "2025-02-27 21:54:55", "symbol": "", "price": 1.0}', "symbol must be a non-empty string"),
    (b'{"timestamp": "2025-02-27 21:54:55", "symbol": "AAPL", "price": "1.0"}', "price must be a number"),
    (b'{"timestamp": "2025-02-27 21:54:55", "symbol": "AAPL", "price": true}', "price must be a number"),
    (b'{"timestamp": "2025-02-27 21:54:55", "symbol": "AAPL", "price": -3}', "finite and positive"),
    (b'{"timestamp": "2025-02-27 21:54:55", "symbol": "AAPL", "price": 0}', "finite and positive"),
    (b'{"timestamp": "2025-02-27 21:54:55", "symbol": "AAPL", "price": 1e400}', "infinity"),
    (b'{"timestamp": "2025-02-27 21:54:55", "symbol": "AAPL", "price": NaN}', "not JSON"),
    (b'{"timestamp": 1740693295, "symbol": "AAPL", "price": 1.0}', "timestamp must be a string"),
    (b'{"timestamp": "27/02/2025", "symbol": "AAPL", "price": 1.0}', "not ISO 8601"),
])
def test_malformed_ticks_get_a_reason(raw, reason):
    result = parse_tick(raw)
    assert isinstance(result, str) and reason in result


@pytest.mark.parametrize("raw", [
    b'{"timestamp": "2025-02-27 21:54:55", "symbol": "AAPL", "price": 242.08}',
    b'{"timestamp": "2025-02-27T21:54:55+00:00", "symbol": "AAPL", "price": 242}',  # an offset: exchange clock
    b'{"timestamp": "2025-02-27", "symbol": " AAPL ", "price": 1e-9, "extra": [1]}',
    b'{"timestamp": "2025-02-27 21:54:55", "symbol": "   ", "price": 1.0}',
    b'{"timestamp": "2025-02-27 21:54:55", "symbol": "' + b"X" * 33 + b'", "price": 1.0}',
    b'{"timestamp": "2025-02-27 21:54:55", "symbol": ["AAPL"], "price": 1.0}',
    b'{"timestamp": "2025-02-27 21:54:55", "symbol": "AAPL", "price": null}',
    b'{"timestamp": "2025-02-30 21:54:55", "symbol": "AAPL", "price": 1.0}',
    b'"a string"', b"42", b"", None,
])
def test_the_short_path_parses_exactly_as_the_full_checks(raw):
    for _ in range(2):  # the second time from the timestamp cache
        fast, full = parse_tick(raw), messages._malformed(raw)
        assert fast == full
        if isinstance(full, Tick):
            assert fast.time_s == full.time_s == messages.clock_seconds(full.timestamp)


def test_the_timestamp_cache_stays_bounded():
    for second in range(messages._SECONDS_MAX + 10):
        assert isinstance(parse_tick(encode_tick(f"2025-02-27 21:{second // 60 % 60:02d}:{second % 60:02d}.{second}",
                                                 "AAPL", 1.0)), Tick)
    assert len(messages._SECONDS) <= messages._SECONDS_MAX


def test_prediction_carries_the_contract_fields_and_the_input_position():
    import orjson

    out = orjson.loads(encode_prediction(Tick("2025-02-27 21:54:55", "AAPL", 242.08), 243.0, "3", 1, 77, "w1"))
    assert out == {"timestamp": "2025-02-27 21:54:55", "symbol": "AAPL", "actual_price": 242.08,
                   "predicted_price": 243.0, "model_version": "3", "input_partition": 1, "input_offset": 77,
                   "worker": "w1"}


def test_prediction_carries_the_interval_bounds_beside_the_point_forecast():
    import orjson

    bounds = {"lower_80": 240.1, "upper_80": 245.9, "lower_95": 238.0, "upper_95": 248.2}
    out = orjson.loads(encode_prediction(Tick("2025-02-27 21:54:55", "AAPL", 242.08), 243.0, "3", 1, 77, "w1",
                                         bounds))
    assert {k: out[k] for k in bounds} == bounds and out["predicted_price"] == 243.0
