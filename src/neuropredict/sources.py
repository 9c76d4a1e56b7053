"""Where raw prices come from: yfinance (bounded by a deadline) or the bundled real snapshot."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from neuropredict.errors import DataSourceError
from neuropredict.files import read_json, write_json
from neuropredict.settings.contracts import EXCHANGE_TZ
from neuropredict.settings.schema import DataParams

log = logging.getLogger(__name__)

RAW_COLUMNS = {
    "1d": ("Date", "Open", "High", "Low", "Close", "Adj Close", "Volume"),
    "1m": ("Datetime", "Open", "High", "Low", "Close", "Volume"),
}
SNAPSHOT_SUBDIR = {"1d": "daily", "1m": "intraday"}
MANIFEST = "SOURCE.json"
STREAM_COLUMNS = ("timestamp", "price")  # data/stream/<interval>/<SYMBOL>.csv: exchange-local stamps


def time_column(interval: str) -> str:
    return RAW_COLUMNS[interval][0]


@dataclass(frozen=True)
class RawPrices:
    """One frame per symbol, in yfinance's column layout, and where they came from."""

    source: str  # "yfinance" or "snapshot"
    reason: str  # why this source was used
    frames: dict[str, pd.DataFrame]


def download(params: DataParams, snapshot_dir: Path) -> RawPrices:
    """Fetch prices as params.source says; `auto` falls back to the snapshot when Yahoo fails."""
    if params.source == "snapshot":
        return RawPrices("snapshot", "data.source is 'snapshot'", read_snapshot(params, snapshot_dir))
    try:
        frames = fetch_yfinance(params)
        return RawPrices("yfinance", "downloaded from Yahoo Finance", frames)
    except DataSourceError as exc:
        if params.source == "yfinance":
            raise
        log.debug("yfinance unavailable (%s); using the bundled snapshot", exc)  # the stage says so, once
        reason = f"yfinance unavailable: {exc}"
        return RawPrices("snapshot", reason, read_snapshot(params, snapshot_dir))


def fetch_yfinance(params: DataParams) -> dict[str, pd.DataFrame]:
    """yf.download under a hard deadline: its own timeouts do not bound the whole call."""
    import yfinance as yf

    last = pd.Timestamp.now(EXCHANGE_TZ).normalize().tz_localize(None) if params.latest else pd.Timestamp(params.end)
    end = (last + pd.Timedelta(days=1)).strftime("%Y-%m-%d")  # end is exclusive
    box: dict[str, object] = {}

    def call() -> None:
        try:
            box["frame"] = yf.download(
                list(params.symbols), start=params.start, end=end, interval=params.interval,
                auto_adjust=False, progress=False, group_by="column", threads=False,
                multi_level_index=True,
            )
        except Exception as exc:  # yfinance raises many types; all mean "no data from Yahoo"
            box["error"] = exc

    worker = threading.Thread(target=call, name="yfinance-download", daemon=True)
    worker.start()
    worker.join(params.download_timeout_s)
    if worker.is_alive():
        raise DataSourceError(f"no answer from Yahoo within {params.download_timeout_s:g} s")
    if "error" in box:
        raise DataSourceError(f"{type(box['error']).__name__}: {box['error']}")
    return _split_yfinance_frame(box.get("frame"), params)


def _split_yfinance_frame(frame: object, params: DataParams) -> dict[str, pd.DataFrame]:
    if not isinstance(frame, pd.DataFrame) or frame.empty:
        raise DataSourceError("Yahoo returned no rows")
    columns = RAW_COLUMNS[params.interval]
    frames = {}
    for symbol in params.symbols:
        try:
            one = frame.xs(symbol, axis=1, level=-1)
        except KeyError:
            raise DataSourceError(f"Yahoo returned no column for {symbol}") from None
        one = one.dropna(how="all")
        if one.empty:
            raise DataSourceError(f"Yahoo returned no rows for {symbol}")
        one = one.reset_index()
        one = one.rename(columns={one.columns[0]: columns[0]})
        one[columns[0]] = _format_times(one[columns[0]], params.interval)
        missing = [c for c in columns if c not in one.columns]
        if missing:
            raise DataSourceError(f"Yahoo's frame for {symbol} lacks {missing}")
        frames[symbol] = one.loc[:, list(columns)].reset_index(drop=True)
    return frames


def _format_times(times: pd.Series, interval: str) -> pd.Series:
    times = pd.to_datetime(times)
    if interval == "1d":
        return times.dt.strftime("%Y-%m-%d")
    if times.dt.tz is None:
        times = times.dt.tz_localize("UTC")
    return times.dt.tz_convert(EXCHANGE_TZ).astype(str)


def read_snapshot(params: DataParams, snapshot_dir: Path) -> dict[str, pd.DataFrame]:
    """The bundled real prices, clipped to params.start..params.end."""
    folder = Path(snapshot_dir) / SNAPSHOT_SUBDIR[params.interval]
    suffix = "" if params.interval == "1d" else f"_{params.interval}"
    available = sorted(p.stem.removesuffix(suffix) for p in folder.glob(f"*{suffix}.csv"))
    frames = {}
    for symbol in params.symbols:
        path = folder / f"{symbol}{suffix}.csv"
        if not path.is_file():
            raise DataSourceError(
                f"the bundled {params.interval} snapshot has no {symbol}; "
                f"it has {', '.join(available)} (set data.symbols accordingly)"
            )
        frame = pd.read_csv(path)
        frames[symbol] = _clip(frame, params, path)
    return frames


def read_raw(raw_dir: Path, symbols) -> dict[str, pd.DataFrame]:
    """The downloaded (and validated) files of data/raw, one frame per symbol."""
    raw_dir = Path(raw_dir)
    missing = [s for s in symbols if not (raw_dir / f"{s}.csv").is_file()]
    if missing:
        raise DataSourceError(f"{raw_dir} has no file for {', '.join(missing)}: run `dvc repro download`")
    return {s: pd.read_csv(raw_dir / f"{s}.csv") for s in symbols}


def _clip(frame: pd.DataFrame, params: DataParams, path: Path) -> pd.DataFrame:
    tcol = frame.columns[0]
    day = pd.to_datetime(frame[tcol].str.slice(0, 10))
    keep = day >= pd.Timestamp(params.start)
    if not params.latest:
        keep &= day <= pd.Timestamp(params.end)
    if not keep.any():
        raise DataSourceError(
            f"{path.name} has no rows in {params.start}..{params.end}; it covers "
            f"{frame[tcol].iloc[0][:10]}..{frame[tcol].iloc[-1][:10]} (adjust data.start/data.end)"
        )
    return frame.loc[keep].reset_index(drop=True)


def stream_file(stream_dir: Path, interval: str, symbol: str) -> Path:
    return Path(stream_dir) / interval / f"{symbol}.csv"


def with_stream(raw: RawPrices, stream_dir: Path, params: DataParams) -> tuple[RawPrices, dict[str, int]]:
    """The source's bars, then the ticks the stream carried after each symbol's last bar (the
    source wins where both have a time: its bars are the reference). A tick becomes a bar whose
    open, high, low and close are its price and whose volume is unknown (0). Returns the rows
    taken from the stream per symbol."""
    frames, taken = {}, {}
    for symbol, frame in raw.frames.items():
        path = stream_file(stream_dir, params.interval, symbol)
        ticks = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=list(STREAM_COLUMNS))
        bars = _ticks_as_bars(ticks, params)
        tcol = frame.columns[0]
        later = bars[bars[tcol] > frame[tcol].iloc[-1]] if len(frame) else bars
        frames[symbol] = pd.concat([frame, later], ignore_index=True) if len(later) else frame
        taken[symbol] = len(later)
    if not any(taken.values()):
        return raw, taken
    reason = f"{raw.reason}; then {sum(taken.values())} ticks the stream carried (data/stream)"
    return RawPrices(raw.source, reason, frames), taken


def _ticks_as_bars(ticks: pd.DataFrame, params: DataParams) -> pd.DataFrame:
    columns = RAW_COLUMNS[params.interval]
    stamps = pd.to_datetime(ticks["timestamp"].astype(str).str.slice(0, 19))
    keep = stamps >= pd.Timestamp(params.start)
    if not params.latest:
        keep &= stamps < pd.Timestamp(params.end) + pd.Timedelta(days=1)
    stamps, price = stamps[keep], ticks.loc[keep, "price"].astype(float)
    if params.interval == "1d":
        times = stamps.dt.strftime("%Y-%m-%d")
    else:
        times = stamps.dt.tz_localize(EXCHANGE_TZ).astype(str)
    bars = pd.DataFrame({columns[0]: times.to_numpy()})
    for column in columns[1:]:
        bars[column] = 0 if column == "Volume" else price.to_numpy()
    return bars


def write_raw(raw: RawPrices, raw_dir: Path, params: DataParams) -> dict[str, object]:
    """One CSV per symbol plus a manifest saying which source was used and why."""
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    for stale in raw_dir.glob("*.csv"):
        stale.unlink()
    summary = {}
    for symbol, frame in raw.frames.items():
        frame.to_csv(raw_dir / f"{symbol}.csv", index=False)
        tcol = frame.columns[0]
        summary[symbol] = {"rows": len(frame), "first": str(frame[tcol].iloc[0]),
                           "last": str(frame[tcol].iloc[-1])}
    manifest = {"source": raw.source, "reason": raw.reason, "interval": params.interval,
                "symbols": summary}
    write_json(raw_dir / MANIFEST, manifest)
    return manifest


def read_manifest(raw_dir: Path) -> dict[str, object]:
    path = Path(raw_dir) / MANIFEST
    if not path.is_file():
        raise DataSourceError(f"{path} is missing: run the download stage first (dvc repro download)")
    return read_json(path)
