"""Ticks into the input topic (`stock_prices`): a replay of real history, or live yfinance quotes."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pandas as pd

from neuropredict import kafka_io, messages
from neuropredict.errors import ConfigError, DataSourceError
from neuropredict.features import resolve_splits, session_ids
from neuropredict.messages import Tick
from neuropredict.settings.paths import Paths
from neuropredict.settings.schema import DataParams, Params, ServingParams
from neuropredict.sources import read_manifest, read_raw, read_snapshot, time_column

log = logging.getLogger(__name__)

DAILY_CLOSE_TIME = "16:00:00"  # a daily close is stamped at the NYSE close


def replay_frames(symbols: Iterable[str], interval: str, raw_dir: Path, snapshot_dir: Path) -> tuple[dict, str]:
    """Bars to replay: the pipeline's validated data/raw when it holds them (what the model was
    scored on), else the bundled snapshot. Returns the frames and where they came from."""
    symbols = tuple(symbols)
    raw_dir = Path(raw_dir)
    try:
        if read_manifest(raw_dir).get("interval") == interval:
            return read_raw(raw_dir, symbols), str(raw_dir)
    except DataSourceError:
        pass
    every = DataParams(symbols=symbols, start="1900-01-01", end="2100-01-01", interval=interval, source="snapshot")
    return read_snapshot(every, snapshot_dir), "the bundled snapshot"


def replay_period(params: Params, project: Paths, lead: int, start: str | None = None, end: str | None = None,
                  symbols: Iterable[str] | None = None, interval: str | None = None) -> tuple[list[Tick], str]:
    """The real ticks of a period (default: the held-out test period of params' symbols), with
    `lead` earlier ticks per symbol (a window's worth: the first forecast is then for `start`),
    and where they came from. The one assembly behind produce, the demo, parity and the bench."""
    interval = interval or params.data.interval
    frames, origin = replay_frames(symbols or params.data.symbols, interval, project.raw_dir, project.snapshot_dir)
    if start is None or end is None:
        periods = resolve_splits(params.featurize, pd.concat([f[time_column(interval)].astype(str).str.slice(0, 10)
                                                              for f in frames.values()]))
        start, end = start or periods.test_start, end or periods.end
    ticks = replay_ticks(frames, interval, start, end, lead, params.featurize.price_column)
    return ticks, f"{origin}, {start}..{end}"


def replay_ticks(frames: dict[str, pd.DataFrame], interval: str, start: str, end: str, lead: int = 0,
                 price_column: str = "Close") -> list[Tick]:
    """Real bars in time order (symbols interleaved), plus `lead` earlier bars per symbol so a
    worker's windows are full when `start` arrives and its first forecast is for `start`."""
    lo, hi = pd.Timestamp(start), pd.Timestamp(end)
    tcol = time_column(interval)
    rows = []
    for symbol, frame in frames.items():
        stamps = frame[tcol].astype(str).str.slice(0, 19)
        day = pd.to_datetime(stamps.str.slice(0, 10))
        inside = ((day >= lo) & (day <= hi)).to_numpy()
        if not inside.any():
            raise ConfigError(f"no {interval} bars for {symbol} in {start}..{end}")
        first = int(inside.argmax())
        keep = inside.copy()
        keep[max(0, first - lead):first] = True
        text = stamps[keep] + (" " + DAILY_CLOSE_TIME if interval == "1d" else "")
        rows.append(pd.DataFrame({"timestamp": text.to_numpy(), "symbol": symbol,
                                  "price": frame.loc[keep, price_column].to_numpy(float)}))
    table = pd.concat(rows).sort_values(["timestamp", "symbol"], kind="stable")
    return [Tick(t, s, float(p)) for t, s, p in table.itertuples(index=False)]


def expected_forecasts(ticks: Sequence[Tick], window: int, session_reset: bool) -> int:
    """How many forecasts a fresh worker makes for these ticks: every tick once its symbol has
    `window` prices (in the same session, for intraday models)."""
    sessions = session_ids([messages.clock_seconds(t.timestamp) for t in ticks], session_reset)
    runs = Counter(zip((t.symbol for t in ticks), sessions.tolist()))
    return sum(max(0, n - (window - 1)) for n in runs.values())


def publish(ticks: Iterable[Tick | tuple], topic: str, bootstrap: str | None = None, rate: float = 0.0,
            serving: ServingParams | None = None, malformed: int = 0, stop: threading.Event | None = None) -> dict:
    """Send ticks (key = symbol) to `topic` at `rate` ticks/s (0: as fast as possible); return
    counts and timing.
    `malformed` > 0 mixes that many broken messages in, to exercise the dead-letter path."""
    producer = kafka_io.producer(bootstrap, serving)
    sent = bad = 0
    started = time.perf_counter()
    broken = iter(_malformed_examples(malformed))
    spacing = 0
    if malformed:
        ticks = list(ticks)
        spacing = max(1, len(ticks) // (malformed + 1))  # spread them through the stream
    try:
        for i, tick in enumerate(ticks):
            if stop is not None and stop.is_set():
                break
            timestamp, symbol, price = tick if isinstance(tick, tuple) else (tick.timestamp, tick.symbol, tick.price)
            producer.send(topic, key=symbol.encode(), value=messages.encode_tick(timestamp, symbol, price))
            sent += 1
            if spacing and i % spacing == spacing - 1 and bad < malformed:
                key, value = next(broken)
                producer.send(topic, key=key, value=value)
                bad += 1
            if rate > 0:
                _pace(started, sent + bad, rate)
        for key, value in broken:  # whatever is left of the malformed quota
            producer.send(topic, key=key, value=value)
            bad += 1
        producer.flush()
    finally:
        producer.close()
    elapsed = time.perf_counter() - started
    return {"ticks": sent, "malformed": bad, "seconds": elapsed, "ticks_per_s": (sent + bad) / max(elapsed, 1e-9)}


def _pace(started: float, count: int, rate: float) -> None:
    ahead = count / rate - (time.perf_counter() - started)
    if ahead > 0.002:
        time.sleep(ahead)


def _malformed_examples(n: int) -> Iterator[tuple[bytes, bytes]]:
    """Realistic ways a tick goes wrong; each must reach the DLQ with a reason."""
    kinds = [
        (b"AAPL", b"not json at all"),
        (b"AAPL", b'{"timestamp": "2024-03-01 16:00:00", "symbol": "AAPL"}'),
        (b"MSFT", b'{"timestamp": "2024-03-01 16:00:00", "symbol": "MSFT", "price": "410.2"}'),
        (b"MSFT", b'{"timestamp": "2024-03-01 16:00:00", "symbol": "MSFT", "price": -1}'),
        (b"AAPL", b'{"timestamp": "yesterday", "symbol": "AAPL", "price": 180.0}'),
        (b"AAPL", b'{"timestamp": "2024-03-01 16:00:00", "symbol": "AAPL", "price": NaN}'),
        (b"", b"[1, 2, 3]"),
    ]
    for i in range(n):
        yield kinds[i % len(kinds)]


def live_ticks(symbols: Iterable[str], poll_s: float, timeout_s: float, stop: threading.Event) -> Iterator[Tick]:
    """The latest 1-minute close of each symbol from yfinance, every poll_s seconds."""
    from neuropredict.sources import fetch_yfinance

    symbols = tuple(symbols)
    seen: dict[str, str] = {}
    first = True
    while not stop.is_set():
        today = pd.Timestamp.now(tz="America/New_York")
        params = DataParams(symbols=symbols, start=(today - pd.Timedelta(days=4)).strftime("%Y-%m-%d"),
                            end=today.strftime("%Y-%m-%d"), interval="1m", source="yfinance",
                            download_timeout_s=timeout_s)
        try:
            frames = fetch_yfinance(params)
        except DataSourceError as exc:
            if first:
                raise DataSourceError(f"live quotes need Yahoo Finance, which is unreachable ({exc}); "
                                      f"replay real history instead: neuropredict produce --source replay") from None
            log.warning("yfinance poll failed (%s); retrying in %.0f s", exc, poll_s)
        else:
            for symbol, frame in frames.items():
                last = frame.iloc[-1]
                stamp = str(last["Datetime"])[:19]
                if seen.get(symbol) != stamp:
                    seen[symbol] = stamp
                    yield Tick(stamp, symbol, float(last["Close"]))
        first = False
        stop.wait(poll_s)
