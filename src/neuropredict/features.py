"""The one feature function shared by training and serving, and date-split windows.

A model sees the last W prices of one symbol as their W-1 log returns, standardised with that
symbol's mean and standard deviation over the training period only (the `ReturnScaler`). It
predicts the next standardised log return; the forecast price is the last real price times
exp(return). Predicting returns, not scaled levels, keeps inputs in range when prices leave the
training range (every symbol's 2024 closes do), which is what lets a model honestly match
persistence at all: measured on this data, models on scaled levels lose to persistence by 3 % to
over 1,000 % (see the README).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from neuropredict import volatility
from neuropredict.errors import ConfigError
from neuropredict.files import read_json, write_json
from neuropredict.settings.contracts import EXCHANGE_TZ
from neuropredict.settings.schema import FeaturizeParams
from neuropredict.sources import time_column

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SCALER_FILE = "scaler.json"
SECONDS_PER_DAY = 86_400


def session_ids(clock_s: np.ndarray | Sequence[float], intraday: bool) -> np.ndarray:
    """THE session rule, for training, serving and evaluation alike: an intraday session is one
    calendar day on the exchange's clock, and a daily series is a single session. Windows,
    forecasts and their scoring never cross a session (an overnight gap is not one step)."""
    clock_s = np.asarray(clock_s, dtype=np.float64)
    if not intraday:
        return np.zeros(len(clock_s), dtype=np.int64)
    return np.floor(clock_s / SECONDS_PER_DAY).astype(np.int64)


@dataclass(frozen=True)
class ReturnScaler:
    """Fitted state of the feature transform: per-symbol training return statistics."""

    window: int
    mean: dict[str, float]
    std: dict[str, float]
    pooled_mean: float
    pooled_std: float
    session_reset: bool = False  # intraday: a window never spans two sessions
    fitted_until: str = ""       # the first date the statistics did NOT see (validation start)
    garch: dict[str, list[float]] = field(default_factory=dict)  # symbol -> GARCH(1,1) [α, β] (volatility.py)

    @classmethod
    def fit(cls, series: dict[str, pd.Series], window: int, validation_start: str,
            session_reset: bool = False) -> ReturnScaler:
        """Statistics of log returns whose both prices lie strictly before validation_start."""
        cut = pd.Timestamp(validation_start)
        per_symbol = {}
        for symbol, s in series.items():
            r = _log_returns(s, session_reset)
            r = r[r.index < cut].dropna()
            if len(r) < 2:
                raise ConfigError(f"{symbol}: fewer than 2 training returns before {validation_start}")
            per_symbol[symbol] = r.to_numpy()
        pooled = np.concatenate(list(per_symbol.values()))
        return cls(
            window=window,
            mean={k: float(v.mean()) for k, v in per_symbol.items()},
            std={k: float(v.std()) for k, v in per_symbol.items()},
            pooled_mean=float(pooled.mean()),
            pooled_std=float(pooled.std()),
            session_reset=session_reset,
            fitted_until=str(cut.date()),
            garch={k: list(volatility.garch_fit(v, float(v.std()) ** 2)) for k, v in per_symbol.items()},
        )

    def stats(self, symbols: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) per row; a symbol unseen in training gets the pooled statistics."""
        mu = np.fromiter((self.mean.get(s, self.pooled_mean) for s in symbols), np.float64, len(symbols))
        sd = np.fromiter((self.std.get(s, self.pooled_std) for s in symbols), np.float64, len(symbols))
        return mu, sd

    def garch_params(self, symbols: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """(α, β) per row; a symbol unseen in training gets the median of the fitted ones; None for
        a scaler fitted before GARCH was (its models serve no GARCH intervals)."""
        if not self.garch:
            return None
        pooled = np.median(np.array(list(self.garch.values())), axis=0).tolist()
        params = [self.garch.get(s, pooled) for s in symbols]
        return (np.fromiter((p[0] for p in params), np.float64, len(params)),
                np.fromiter((p[1] for p in params), np.float64, len(params)))

    def to_model_input(self, windows: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
        """(n, W) raw prices -> (n, W-1, 1) float32 standardised log returns. THE feature function."""
        windows = np.asarray(windows, dtype=np.float64)
        returns = np.log(windows[:, 1:] / windows[:, :-1])
        return ((returns - mu[:, None]) / sd[:, None]).astype(np.float32)[:, :, None]

    def to_target(self, windows: np.ndarray, targets: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
        """The training label: the next price as a standardised log return from the last price."""
        return ((np.log(targets / windows[:, -1]) - mu) / sd).astype(np.float32)

    def to_price(self, outputs: np.ndarray, last_prices: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
        """Model outputs -> next prices: the last REAL price times exp(predicted return)."""
        outputs = np.asarray(outputs, dtype=np.float64).reshape(-1)
        return np.asarray(last_prices, dtype=np.float64) * np.exp(mu + sd * outputs)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ReturnScaler:
        return cls(**d)

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> ReturnScaler:
        return cls.from_dict(read_json(path))


@dataclass
class WindowSet:
    """Rows of (symbol, last W prices, next price, time of the next price)."""

    symbols: np.ndarray       # (n,) str
    windows: np.ndarray       # (n, W) float64 prices
    targets: np.ndarray       # (n,) float64: the next price
    target_times: np.ndarray  # (n,) datetime64[ns]

    def __len__(self) -> int:
        return len(self.targets)

    def select(self, mask: np.ndarray) -> WindowSet:
        return WindowSet(self.symbols[mask], self.windows[mask], self.targets[mask],
                         self.target_times[mask])

    def save(self, path: Path) -> None:
        np.savez_compressed(path, symbols=self.symbols.astype(str), windows=self.windows,
                            targets=self.targets, target_times=self.target_times.astype("datetime64[ns]"))

    @classmethod
    def load(cls, path: Path) -> WindowSet:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["symbols"], z["windows"], z["targets"], z["target_times"])


def load_price_series(raw_dir: Path, symbols: Sequence[str], interval: str,
                      price_column: str) -> dict[str, pd.Series]:
    """Validated raw files -> one price series per symbol, indexed by exchange-local time."""
    tcol = time_column(interval)
    series = {}
    for symbol in symbols:
        frame = pd.read_csv(Path(raw_dir) / f"{symbol}.csv")
        series[symbol] = pd.Series(frame[price_column].to_numpy(np.float64),
                                   index=parse_times(frame[tcol], interval), name=symbol)
    return series


def parse_times(values: pd.Series | Sequence[str], interval: str) -> pd.DatetimeIndex:
    """Dates as naive days; intraday stamps as naive exchange-local times (comparable with params)."""
    times = pd.to_datetime(pd.Series(values), utc=interval != "1d")
    if interval != "1d":
        times = times.dt.tz_convert(EXCHANGE_TZ).dt.tz_localize(None)
    return pd.DatetimeIndex(times)


def _sessions(index: pd.DatetimeIndex, intraday: bool) -> np.ndarray:
    """session_ids of a naive exchange-local index."""
    return session_ids(index.as_unit("ns").asi8 / 1e9, intraday)


def _log_returns(s: pd.Series, session_reset: bool) -> pd.Series:
    r = np.log(s).diff()
    seg = _sessions(s.index, session_reset)
    if session_reset:
        r[np.r_[True, seg[1:] != seg[:-1]]] = np.nan
    return r


def make_windows(series: dict[str, pd.Series], window: int, session_reset: bool = False) -> WindowSet:
    """Every run of W consecutive prices (within one session if intraday) and the price after it."""
    parts = []
    for symbol, s in series.items():
        prices = s.to_numpy(np.float64)
        n = len(prices) - window
        if n <= 0:
            continue
        idx = np.arange(n)[:, None] + np.arange(window + 1)[None, :]
        seg = _sessions(s.index, session_reset)
        ok = seg[idx[:, 0]] == seg[idx[:, -1]]
        idx = idx[ok]
        parts.append(WindowSet(
            symbols=np.full(len(idx), symbol),
            windows=prices[idx[:, :-1]],
            targets=prices[idx[:, -1]],
            target_times=s.index.to_numpy()[idx[:, -1]],
        ))
    if not parts:
        raise ConfigError(f"no symbol has more than window={window} prices")
    return WindowSet(*(np.concatenate([getattr(p, f) for p in parts])
                       for f in ("symbols", "windows", "targets", "target_times")))


@dataclass(frozen=True)
class Splits:
    """The three periods, by the day of the target: train < validation_start <= validation <
    test_start <= test <= end. Counted back from the data's last session (`resolve_splits`), so
    new data moves all three and a retrained model is tested on the newest sessions."""

    validation_start: str  # YYYY-MM-DD: the first session of each period
    test_start: str
    end: str               # the data's last session

    @property
    def last_validation_day(self) -> str:
        return str((pd.Timestamp(self.test_start) - pd.Timedelta(days=1)).date())

    @property
    def validation_period(self) -> str:
        return f"{self.validation_start}..{self.last_validation_day}"

    @property
    def test_period(self) -> str:
        return f"{self.test_start}..{self.end}"


def resolve_splits(params: FeaturizeParams, times: Iterable) -> Splits:
    """The last `test_sessions` sessions (exchange days) of the data are the test period, the
    `validation_sessions` before them validation, and everything earlier training."""
    sessions = pd.DatetimeIndex(pd.to_datetime(pd.Index(times))).normalize().unique().sort_values()
    held_out = params.validation_sessions + params.test_sessions
    if len(sessions) <= held_out:
        span = f" ({sessions[0].date()}..{sessions[-1].date()})" if len(sessions) else ""
        raise ConfigError(f"the data has {len(sessions)} sessions{span}, and featurize.validation_sessions + "
                          f"test_sessions = {held_out} leave none to train on: lower them or start data.start earlier")
    day = lambda i: str(sessions[i].date())  # noqa: E731
    return Splits(day(-held_out), day(-params.test_sessions), day(-1))


def series_splits(series: dict[str, pd.Series], params: FeaturizeParams) -> Splits:
    """resolve_splits on the sessions of every symbol's series."""
    return resolve_splits(params, np.concatenate([s.index.to_numpy() for s in series.values()]))


def split_by_date(rows: WindowSet, splits: Splits) -> dict[str, WindowSet]:
    """Split by the time of the target: train < validation_start <= validation < test_start <= test."""
    t = rows.target_times
    v, s = np.datetime64(pd.Timestamp(splits.validation_start)), np.datetime64(pd.Timestamp(splits.test_start))
    masks = {"train": t < v, "validation": (t >= v) & (t < s), "test": t >= s}
    return {name: rows.select(mask) for name, mask in masks.items()}


def build(params: FeaturizeParams, raw_dir: Path, out_dir: Path, symbols: Sequence[str],
          interval: str) -> dict:
    """The featurize stage: windows, date splits, train-only scaler; returns a summary to log."""
    session_reset = interval != "1d"
    series = load_price_series(raw_dir, symbols, interval, params.price_column)
    periods = series_splits(series, params)
    scaler = ReturnScaler.fit(series, params.window, periods.validation_start, session_reset)
    splits = split_by_date(make_windows(series, params.window, session_reset), periods)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"window": params.window, "symbols": list(symbols), "interval": interval,
                     "periods": asdict(periods)}
    for name in SPLITS:
        part = splits[name]
        if len(part) == 0:
            fix = "start data.start earlier" if name == "train" else f"raise featurize.{name}_sessions"
            raise ConfigError(f"the {name} split has no window of {params.window} prices: lower featurize.window "
                             f"or {fix}")
        part.save(out_dir / f"{name}.npz")
        summary[name] = {"rows": len(part), "first_target": str(part.target_times.min())[:19],
                         "last_target": str(part.target_times.max())[:19],
                         "shape": list(part.windows.shape)}
        log.info("%-10s %6d windows, targets %s .. %s", name, len(part),
                 summary[name]["first_target"], summary[name]["last_target"])
    scaler.save(out_dir / SCALER_FILE)
    return summary
