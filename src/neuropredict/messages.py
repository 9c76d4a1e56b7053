"""The wire formats: input ticks, predictions and dead letters.

Bad input is data: `parse_tick` returns either a `Tick` or the reason it is not one, and the
reason travels to the dead-letter topic with the original bytes untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import orjson

REQUIRED = ("timestamp", "symbol", "price")
MAX_SYMBOL_LEN = 32


@dataclass(frozen=True, slots=True)
class Tick:
    timestamp: str
    symbol: str
    price: float


def parse_tick(value: bytes | None) -> Tick | str:
    """A Tick, or a short reason why the message is malformed."""
    if value is None:
        return "empty message (null value)"
    try:
        msg = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return f"not JSON: {str(exc)[:80]}"
    if not isinstance(msg, dict):
        return f"not a JSON object: got {type(msg).__name__}"
    missing = [k for k in REQUIRED if k not in msg]
    if missing:
        return f"missing field(s): {', '.join(missing)}"
    ts, symbol, price = msg["timestamp"], msg["symbol"], msg["price"]
    if not isinstance(symbol, str) or not symbol.strip() or len(symbol) > MAX_SYMBOL_LEN:
        return f"symbol must be a non-empty string of at most {MAX_SYMBOL_LEN} characters, got {symbol!r:.40}"
    if isinstance(price, bool) or not isinstance(price, (int, float)):
        return f"price must be a number, got {type(price).__name__} {price!r:.40}"
    if not math.isfinite(price) or price <= 0:
        return f"price must be finite and positive, got {price!r}"
    if not isinstance(ts, str):
        return f"timestamp must be a string like '2025-02-27 21:54:55', got {type(ts).__name__}"
    try:
        datetime.fromisoformat(ts)
    except ValueError:
        return f"timestamp {ts!r:.40} is not ISO 8601 (e.g. '2025-02-27 21:54:55')"
    return Tick(ts, symbol, float(price))


def encode_tick(timestamp: str, symbol: str, price: float, **extra) -> bytes:
    return orjson.dumps({"timestamp": timestamp, "symbol": symbol, "price": price, **extra})


def encode_prediction(tick: Tick, predicted: float, version: str, partition: int, offset: int,
                      worker: str) -> bytes:
    """The output contract; partition/offset of the input make at-least-once duplicates visible."""
    return orjson.dumps({
        "timestamp": tick.timestamp, "symbol": tick.symbol, "actual_price": tick.price,
        "predicted_price": predicted, "model_version": version,
        "input_partition": partition, "input_offset": offset, "worker": worker,
    })


def decode(value: bytes) -> dict:
    return orjson.loads(value)


def dlq_headers(reason: str, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """Dead-letter metadata travels in headers; the value stays the original bytes."""
    return [("reason", reason.encode()), ("source_topic", topic.encode()),
            ("source_partition", str(partition).encode()), ("source_offset", str(offset).encode())]


def header_dict(headers) -> dict[str, str]:
    return {k: v.decode(errors="replace") for k, v in (headers or [])}
