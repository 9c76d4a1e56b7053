import threading
import time

import numpy as np
import pandas as pd
import pytest

from neuropredict import sources
from neuropredict.errors import DataSourceError
from neuropredict.settings.schema import DataParams
from tests.conftest import REPO

SNAPSHOT = REPO / "data" / "snapshot"


def _params(**kw) -> DataParams:
    base = dict(symbols=("AAPL", "MSFT"), start="2024-01-01", end="2024-03-31", interval="1d",
                source="auto", download_timeout_s=2.0)
    return DataParams(**{**base, **kw})


def _yahoo_frame(symbols, days):
    """What yf.download(..., group_by='column', multi_level_index=True) returns."""
    idx = pd.DatetimeIndex(pd.bdate_range("2024-01-02", periods=days), name="Date")
    cols = pd.MultiIndex.from_product([["Adj Close", "Close", "High", "Low", "Open", "Volume"], symbols],
                                      names=["Price", "Ticker"])
    data = np.tile(np.array([[99.0] * len(symbols) + [100.0] * len(symbols) + [101.0] * len(symbols)
                             + [98.0] * len(symbols) + [99.5] * len(symbols) + [1e6] * len(symbols)]), (days, 1))
    return pd.DataFrame(data, index=idx, columns=cols)


def test_snapshot_is_clipped_to_the_requested_dates():
    frames = sources.read_snapshot(_params(source="snapshot"), SNAPSHOT)
    assert set(frames) == {"AAPL", "MSFT"}
    aapl = frames["AAPL"]
    assert list(aapl.columns) == list(sources.RAW_COLUMNS["1d"])
    assert aapl["Date"].iloc[0] == "2024-01-02" and aapl["Date"].iloc[-1] == "2024-03-28"


def test_snapshot_names_the_symbols_it_has():
    with pytest.raises(DataSourceError, match="has no ZZZZ; it has AAPL, AMZN"):
        sources.read_snapshot(_params(symbols=("ZZZZ",), source="snapshot"), SNAPSHOT)


def test_intraday_snapshot_keeps_exchange_times():
    frames = sources.read_snapshot(_params(symbols=("AAPL",), start="2026-03-20", end="2026-03-20",
                                           interval="1m", source="snapshot"), SNAPSHOT)
    assert len(frames["AAPL"]) == 390
    assert frames["AAPL"]["Datetime"].iloc[0] == "2026-03-20 09:30:00-04:00"


def test_yfinance_frame_is_split_per_symbol_in_the_snapshot_layout(monkeypatch):
    import yfinance

    calls = {}

    def fake_download(tickers, **kw):  # Yahoo's servers cannot be reached here: the one mock
        calls.update(kw, tickers=tickers)
        return _yahoo_frame(tickers, 5)

    monkeypatch.setattr(yfinance, "download", fake_download)
    raw = sources.download(_params(), SNAPSHOT)
    assert raw.source == "yfinance"
    assert calls["tickers"] == ["AAPL", "MSFT"] and calls["auto_adjust"] is False
    assert calls["end"] == "2024-04-01"  # yfinance's end is exclusive
    assert list(raw.frames["MSFT"].columns) == list(sources.RAW_COLUMNS["1d"])
    assert raw.frames["MSFT"]["Date"].iloc[0] == "2024-01-02"


def test_empty_yahoo_answer_falls_back_to_the_snapshot_and_says_why(monkeypatch):
    import yfinance

    monkeypatch.setattr(yfinance, "download", lambda *a, **k: pd.DataFrame())
    raw = sources.download(_params(), SNAPSHOT)
    assert raw.source == "snapshot"
    assert "Yahoo returned no rows" in raw.reason


def test_a_hanging_yahoo_is_cut_off_by_the_deadline(monkeypatch):
    import yfinance

    release = threading.Event()
    monkeypatch.setattr(yfinance, "download", lambda *a, **k: release.wait(30))
    started = time.monotonic()
    raw = sources.download(_params(download_timeout_s=0.5), SNAPSHOT)
    release.set()
    assert raw.source == "snapshot" and "within 0.5 s" in raw.reason
    assert time.monotonic() - started < 10


def test_source_yfinance_fails_instead_of_falling_back(monkeypatch):
    import yfinance

    monkeypatch.setattr(yfinance, "download", lambda *a, **k: pd.DataFrame())
    with pytest.raises(DataSourceError, match="no rows"):
        sources.download(_params(source="yfinance"), SNAPSHOT)


def test_write_raw_records_the_source(tmp_path):
    params = _params(source="snapshot")
    manifest = sources.write_raw(sources.download(params, SNAPSHOT), tmp_path, params)
    assert manifest["source"] == "snapshot"
    assert sources.read_manifest(tmp_path)["symbols"]["AAPL"]["rows"] == 61
    assert sorted(p.name for p in tmp_path.glob("*.csv")) == ["AAPL.csv", "MSFT.csv"]
