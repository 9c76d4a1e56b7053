"""A batch's forecasts: one model call for every full window, in chunks, each chunk's forecasts
encoded and handed to delivery while the model thread computes the next."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Executor

import numpy as np

from neuropredict import intervals, messages
from neuropredict.stream.batch import Batch
from neuropredict.stream.delivery import Delivery
from neuropredict.stream.online import OnlineIntervals
from neuropredict.stream.state import SymbolState
from neuropredict.stream.stats import LiveStats, Timing

# A batch's model call is cut into at most MODEL_CHUNKS_MAX chunks of at least MODEL_CHUNK_MIN_ROWS
# rows, so publishing one chunk overlaps the call of the next (smaller chunks cost more calls).
MODEL_CHUNKS_MAX = 8
MODEL_CHUNK_MIN_ROWS = 256


def chunk_rows(n: int) -> int:
    return max(MODEL_CHUNK_MIN_ROWS, -(-n // MODEL_CHUNKS_MAX))


def forecast_and_publish(forecaster, batch: Batch, delivery: Delivery, pool: Executor, version: str,
                         worker_id: str, stats: LiveStats | Timing, states: dict[str, SymbolState],
                         then: Callable[[], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Forecast every tick that ends a full window and publish it. Returns the forecast of each
    tick (NaN: none, warm-up) and its live interval bounds (forecaster.bounds_matrix). `then()`
    runs once the model has made the batch's last chunk, before it is published: the model
    thread is free from there (the shadows' model calls start on it)."""
    owners, windows = batch.forecast_rows()
    if not len(owners):
        if then:
            then()
        return _none(batch, forecaster)
    with stats.timed("transform"):
        model_input = forecaster.prepare(windows, [batch.ticks[i].symbol for i in owners])
    model_s = forecaster.model_seconds
    chunks = forecaster.forecast_chunks(model_input, chunk_rows(len(owners)), pool, intervals.LIVE_METHODS)
    out = publish(forecaster, batch, owners, chunks, delivery, version, worker_id, stats, states, then=then)
    stats.add_seconds("model", forecaster.model_seconds - model_s)
    return out


def start_forecast(forecaster, batch: Batch, pool: Executor) -> tuple[np.ndarray, Iterator]:
    """The model call of the batch's full windows, its first chunk on the pool from now (chunk
    k+1 is computed while the caller publishes chunk k, as forecast_chunks does): the owner tick
    of each window, and the (rows, forecast) chunks."""
    owners, windows = batch.forecast_rows()
    if not len(owners):
        return owners, iter(())
    symbols = np.array([batch.ticks[i].symbol for i in owners], dtype=object)

    def forecast(rows: slice):
        model_input = forecaster.prepare(windows[rows], list(symbols[rows]))
        return next(forecaster.forecast_chunks(model_input, rows.stop - rows.start, None, intervals.LIVE_METHODS))[1]

    size = chunk_rows(len(owners))
    chunks = [slice(lo, min(lo + size, len(owners))) for lo in range(0, len(owners), size)]
    first = pool.submit(forecast, chunks[0])

    def in_turn() -> Iterator:
        pending = first
        for k, rows in enumerate(chunks):
            done = pending.result()
            if k + 1 < len(chunks):
                pending = pool.submit(forecast, chunks[k + 1])
            yield rows, done

    return owners, in_turn()


def publish(forecaster, batch: Batch, owners: np.ndarray, chunks: Iterator, delivery: Delivery, version: str,
            worker_id: str, stats: LiveStats | Timing, states: dict[str, SymbolState], alias: str | None = None,
            then: Callable[[], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Encode and send each chunk's forecasts as the model delivers them, with the intervals it
    serves (online.py; a shadow's: with its alias, to the shadow topic); the forecast and bounds
    of each tick of the batch."""
    forecasts, bounds = _none(batch, forecaster)
    fields = forecaster.interval_fields
    online = OnlineIntervals(forecaster.calibration, version, states, batch)
    while True:
        with stats.timed("model_wait"):
            rows, forecast = next(chunks, (None, None))
        if rows is None:
            break
        if then and rows.stop == len(owners):
            then()
        mine = owners[rows]
        with stats.timed("intervals"):
            forecast = online.adapt(forecast, mine)
        forecasts[mine] = forecast.price
        bounds[mine] = forecaster.bounds_matrix(forecast)
        with stats.timed("encode"):
            out = encode(batch, mine, forecast, fields, version, worker_id, alias)
        with stats.timed("produce"):
            delivery.publish(out, shadow=alias is not None)
    return forecasts, bounds


def _none(batch: Batch, forecaster) -> tuple[np.ndarray, np.ndarray]:
    return np.full(len(batch.ticks), np.nan), np.full((len(batch.ticks), 2 * len(forecaster.live_keys)), np.nan)


def encode(batch: Batch, ticks: np.ndarray, forecast, fields: tuple, version: str,
           worker_id: str, alias: str | None = None) -> list[tuple[bytes, bytes]]:
    """(key, value) of the output message of each forecast tick, key = symbol."""
    index = ticks.tolist()
    chosen, records = [batch.ticks[i] for i in index], [batch.records[i] for i in index]
    values = messages.encode_predictions(chosen, forecast.price.tolist(), {f: forecast.bounds[f].tolist() for f in fields},
                                         version, [r.partition for r in records], [r.offset for r in records],
                                         worker_id, alias)
    return list(zip([t.symbol.encode() for t in chosen], values))
