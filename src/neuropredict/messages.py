"""The wire formats: input ticks, predictions and dead letters.

Bad input is data: `parse_tick` returns either a `Tick` or the reason it is not one, and the
reason travels to the dead-letter topic with the original bytes untouched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import repeat
from zoneinfo import ZoneInfo

import orjson

from neuropredict.settings.contracts import EXCHANGE_TZ

REQUIRED = ("timestamp", "symbol", "price")
MAX_SYMBOL_LEN = 32
_EXCHANGE = ZoneInfo(EXCHANGE_TZ)
# kafka-python refuses records over its 1 MiB max_request_size, and Apache Kafka's default
# message.max.bytes is ~1 MB: a dead letter keeps at most this much of an oversized original.
DEAD_LETTER_MAX_BYTES = 512 * 1024
_EPOCH = datetime(1970, 1, 1)


@dataclass(frozen=True, slots=True)
class Tick:
    timestamp: str
    symbol: str
    price: float
    time_s: float = field(default=math.nan, compare=False)  # exchange-local clock, seconds (clock_seconds)


def clock_seconds(moment: datetime | str) -> float:
    """Seconds since 1970 on the exchange's local clock: naive stamps are exchange-local (as the
    replay and the bundled data write them); stamps with an offset are converted to it first."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is not None:
        moment = moment.astimezone(_EXCHANGE).replace(tzinfo=None)
    return (moment - _EPOCH).total_seconds()


def parse_tick(value: bytes | None) -> Tick | str:
    """A Tick, or a short reason why the message is malformed. The worker parses every record:
    a well-formed one takes the short path (exact types, a cache of recent timestamps: a feed's
    symbols share them); anything else goes to `_malformed`, which names what is wrong."""
    try:
        msg = orjson.loads(value)
        ts, symbol, price = msg["timestamp"], msg["symbol"], msg["price"]
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return _malformed(value)
    if (type(ts) is str and type(symbol) is str and 0 < len(symbol) <= MAX_SYMBOL_LEN and not symbol.isspace()
            and (type(price) is float or type(price) is int) and 0 < price < math.inf):
        seconds = _SECONDS.get(ts)
        if seconds is None:
            seconds = _remember_seconds(ts)
        if seconds is not None:
            return Tick(ts, symbol, float(price), seconds)
    return _malformed(value)


_SECONDS: dict[str, float | None] = {}  # timestamp -> clock_seconds (None: not ISO 8601)
_SECONDS_MAX = 4096


def _remember_seconds(ts: str) -> float | None:
    if len(_SECONDS) >= _SECONDS_MAX:
        _SECONDS.clear()
    try:
        seconds = clock_seconds(datetime.fromisoformat(ts))
    except ValueError:
        seconds = None
    _SECONDS[ts] = seconds
    return seconds


def _malformed(value: bytes | None) -> Tick | str:
    """Why the message is not a tick (the checks in the order a reader fixes them)."""
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
        moment = datetime.fromisoformat(ts)
    except ValueError:
        return f"timestamp {ts!r:.40} is not ISO 8601 (e.g. '2025-02-27 21:54:55')"
    return Tick(ts, symbol, float(price), clock_seconds(moment))


def encode_tick(timestamp: str, symbol: str, price: float, **extra) -> bytes:
    return orjson.dumps({"timestamp": timestamp, "symbol": symbol, "price": price, **extra})


def encode_prediction(tick: Tick, predicted: float, version: str, partition: int, offset: int,
                      worker: str, bounds: dict[str, float] | None = None, alias: str | None = None) -> bytes:
    """The output contract; partition/offset of the input make at-least-once duplicates visible.
    `bounds`: the prediction intervals (lower_80, upper_80, lower_95, upper_95 by default).
    `alias`: a shadow's (its forecasts go to the shadow topic); production's carry none."""
    columns = {name: [value] for name, value in (bounds or {}).items()}
    return encode_predictions([tick], [predicted], columns, version, [partition], [offset], worker, alias)[0]


def encode_predictions(ticks: Sequence[Tick], predicted: Sequence[float], bounds: dict[str, Sequence[float]],
                       version: str, partitions: Sequence[int], offsets: Sequence[int], worker: str,
                       alias: str | None = None) -> list[bytes]:
    """encode_prediction of many forecasts (the worker's hot path: one dict per record, built
    from one tuple of values; bounds given by column)."""
    names = ("timestamp", "symbol", "actual_price", "predicted_price", *bounds, "model_version", "input_partition",
             "input_offset", "worker", *(("alias",) if alias is not None else ()))
    tail = (alias,) if alias is not None else ()
    rows = zip(*bounds.values()) if bounds else repeat((), len(ticks))
    dumps = orjson.dumps
    return [dumps(dict(zip(names, (t.timestamp, t.symbol, t.price, p, *b, version, part, off, worker, *tail))))
            for t, p, b, part, off in zip(ticks, predicted, rows, partitions, offsets)]


def decode(value: bytes) -> dict:
    return orjson.loads(value)


def source_headers(topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    return [("source_topic", topic.encode()), ("source_partition", str(partition).encode()),
            ("source_offset", str(offset).encode())]


def dead_letter(key: bytes | None, value: bytes | None, reason: str, topic: str, partition: int, offset: int,
                max_bytes: int = DEAD_LETTER_MAX_BYTES) -> tuple[bytes | None, bytes | None, list]:
    """(key, value, headers) of a dead letter: the original bytes untouched, the reason and the
    source in headers. A record too large to be sent again keeps its first max_bytes, and says so
    (`truncated`, `original_size`); the source offset points at the whole of it."""
    headers = [("reason", reason.encode()), *source_headers(topic, partition, offset)]
    size = len(key or b"") + len(value or b"")
    if size > max_bytes:
        key, value = (key or b"")[:max_bytes // 64] or None, (value or b"")[:max_bytes]
        headers += [("truncated", b"true"), ("original_size", str(size).encode())]
    return key, value, headers


def unsendable_trace(reason: str, topic: str, partition: int, offset: int, size: int,
                     error: str) -> tuple[None, bytes, list]:
    """What stays of a dead letter the broker refused even truncated: no bytes, every reason.
    `error`: the name of the refusal (e.g. MessageSizeTooLargeError)."""
    why = f"{reason}; the dead letter itself was refused ({error}), so its bytes are not kept"
    return None, b"", [("reason", why.encode()), *source_headers(topic, partition, offset),
                       ("truncated", b"true"), ("original_size", str(size).encode())]


def rekey_headers(topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """A tick sent again under its symbol's key says where it first arrived."""
    return [("rekeyed_from_" + k.removeprefix("source_"), v) for k, v in source_headers(topic, partition, offset)]


def header_dict(headers) -> dict[str, str]:
    return {k: v.decode(errors="replace") for k, v in (headers or [])}
