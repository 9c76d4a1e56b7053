"""A batch's forecasts: one model call for every full window, in chunks, each chunk's forecasts
encoded and handed to delivery while the model thread computes the next."""

from __future__ import annotations

from concurrent.futures import Executor

import numpy as np

from neuropredict import intervals, messages
from neuropredict.stream.batch import Batch
from neuropredict.stream.delivery import Delivery
from neuropredict.stream.stats import LiveStats, Timing

# A batch's model call is cut into at most MODEL_CHUNKS_MAX chunks of at least MODEL_CHUNK_MIN_ROWS
# rows, so publishing one chunk overlaps the call of the next (smaller chunks cost more calls).
MODEL_CHUNKS_MAX = 8
MODEL_CHUNK_MIN_ROWS = 256


def chunk_rows(n: int) -> int:
    return max(MODEL_CHUNK_MIN_ROWS, -(-n // MODEL_CHUNKS_MAX))


def forecast_and_publish(forecaster, batch: Batch, delivery: Delivery, pool: Executor, version: str,
                         worker_id: str, stats: LiveStats | Timing, alias: str | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Forecast every tick that ends a full window and publish it (a shadow's, with its alias, to
    the shadow topic). Returns the forecast of each tick (NaN: none, warm-up) and its live
    interval bounds (forecaster.bounds_matrix)."""
    forecasts, owners = np.full(len(batch.ticks), np.nan), batch.owners()
    bounds = np.full((len(batch.ticks), 2 * len(forecaster.live_keys)), np.nan)
    if not len(owners):
        return forecasts, bounds
    with stats.timed("transform"):
        model_input = forecaster.prepare(batch.windows(), [batch.ticks[i].symbol for i in owners])
    model_s, fields = forecaster.model_seconds, forecaster.interval_fields
    chunks = forecaster.forecast_chunks(model_input, chunk_rows(len(owners)), pool, intervals.LIVE_METHODS)
    while True:
        with stats.timed("model_wait"):
            rows, forecast = next(chunks, (None, None))
        if rows is None:
            break
        mine = owners[rows]
        forecasts[mine] = forecast.price
        bounds[mine] = forecaster.bounds_matrix(forecast)
        with stats.timed("encode"):
            out = encode(batch, mine, forecast, fields, version, worker_id, alias)
        with stats.timed("produce"):
            delivery.publish(out, shadow=alias is not None)
    stats.add_seconds("model", forecaster.model_seconds - model_s)
    return forecasts, bounds


def encode(batch: Batch, ticks: np.ndarray, forecast, fields: tuple, version: str,
           worker_id: str, alias: str | None = None) -> list[tuple[bytes, bytes]]:
    """(key, value) of the output message of each forecast tick, key = symbol."""
    published = (np.column_stack([forecast.bounds[f] for f in fields]).tolist() if fields
                 else [()] * len(ticks))
    encode_one, all_ticks, records = messages.encode_prediction, batch.ticks, batch.records
    return [(all_ticks[i].symbol.encode(), encode_one(all_ticks[i], p, version, records[i].partition,
                                                      records[i].offset, worker_id, dict(zip(fields, b)), alias))
            for i, p, b in zip(ticks.tolist(), forecast.price.tolist(), published)]
