"""The daily loop's first half for real: a model trained on data that ends on 2024-10-31, the
stream then carries November and December, and `neuropredict retrain` brings those ticks into
the pipeline's data: the splits move to the newest sessions and a new version is registered,
gated against production on the same new test rows."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from neuropredict import messages
from neuropredict.messages import Tick
from tests.conftest import REPO, copy_with_params, dvc, load_json, project_env
from tests.integration.kafka_helpers import publish

pytestmark = pytest.mark.slow

SOURCE_END = "2024-10-31"  # where the source's data ends here; the stream goes on to 2024-12-31


def _retrain(root, env, *args):
    return subprocess.run([sys.executable, "-m", "neuropredict.cli", "retrain", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)


def _stream_ticks(symbols):
    """The real closes after SOURCE_END, as the daily stream carries them (16:00 stamps), in time order."""
    ticks = []
    for symbol in symbols:
        frame = pd.read_csv(REPO / "data/snapshot/daily" / f"{symbol}.csv")
        later = frame[frame["Date"] > SOURCE_END]
        ticks += [Tick(f"{d} 16:00:00", symbol, float(c)) for d, c in zip(later["Date"], later["Close"])]
    return sorted(ticks, key=lambda t: (t.timestamp, t.symbol)), len(later)


def test_retrain_brings_the_streams_ticks_into_training_and_registers_a_gated_version(trained_project, tmp_path,
                                                                                      stream):
    # one cell, one epoch: this test is about the data and the registry, not the search
    root, params = copy_with_params(trained_project, tmp_path / "p",
                                    {"data": {"end": "latest"}, "tune": {"cells": ["gru"], "max_epochs": 1}})
    for symbol in params.data.symbols:  # the source's newest bar is SOURCE_END (an old snapshot, Yahoo away)
        path = root / "data/snapshot/daily" / f"{symbol}.csv"
        frame = pd.read_csv(path)
        frame[frame["Date"] <= SOURCE_END].to_csv(path, index=False)
    dvc(root, "repro")
    before = load_json(root / "metrics/featurize.json")["periods"]
    first = load_json(root / "metrics/register.json")
    assert before["end"] == SOURCE_END

    ticks, sessions = _stream_ticks(params.data.symbols)
    jump = Tick("2024-11-15 17:00:00", "AAPL", 3 * ticks[20].price)  # a bad quote: the rules reject it
    publish(stream, ticks[:20] + [jump] + ticks[20:] + ticks[:5]  # the first five again: at-least-once
            + [Tick("2024-12-31 16:00:00", "NEWCO", 10.0)], malformed=7)
    env = {**project_env(root), **stream.env()}
    proc = _retrain(root, env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    n = len(ticks)
    assert (f"{n + 6 + 1 + 7} records in {stream.topics.prices}: {n} ticks kept ({n} new in data/stream); "
            f"left out 7 malformed, 6 against the serving rules, 1 of other symbols") in proc.stdout

    # the ticks are in the pipeline's data, as bars, after the source's
    raw = pd.read_csv(root / "data/raw/AAPL.csv")
    streamed = raw[raw["Date"] > SOURCE_END]
    assert len(streamed) == sessions and streamed["Date"].iloc[-1] == "2024-12-31"
    real = pd.read_csv(REPO / "data/snapshot/daily/AAPL.csv").set_index("Date")["Close"]
    assert np.allclose(streamed["Close"].to_numpy(), real.loc[streamed["Date"]].to_numpy(), rtol=1e-9, atol=0)
    assert load_json(root / "data/raw/SOURCE.json")["reason"].endswith(f"then {2 * sessions} ticks the stream carried (data/stream)")

    # all three splits moved by the stream's sessions
    after = load_json(root / "metrics/featurize.json")["periods"]
    days = pd.DatetimeIndex(pd.to_datetime(raw["Date"]))
    assert after["end"] == "2024-12-31"
    for key in ("validation_start", "test_start"):
        moved = days.get_loc(pd.Timestamp(after[key])) - days.get_loc(pd.Timestamp(before[key]))
        assert moved == sessions, key

    # a new version, gated against production re-scored on the same new test rows
    decision = load_json(root / "metrics/register.json")
    assert int(decision["version"]) == int(first["version"]) + 1
    assert decision["test_period"] == f"{after['test_start']}..2024-12-31"
    production = first["version"] if first["promoted"] else first["previous_production"]
    assert decision["previous_production"] == production
    assert decision["production_test_mean_skill"] is not None
    assert f"retrain: test period {before['test_start']}..{SOURCE_END} -> {after['test_start']}..2024-12-31" in proc.stdout
    assert f"retrain: version {decision['version']} -> " in proc.stdout

    again = _retrain(root, env, "--collect-only")  # the same topic again adds nothing
    assert again.returncode == 0 and f"{n} ticks kept (0 new in data/stream)" in again.stdout, again.stderr[-2000:]
    stored = pd.read_csv(root / "data/stream/1d/AAPL.csv")
    assert len(stored) == sessions and stored["timestamp"].is_monotonic_increasing
    assert messages.clock_seconds(stored["timestamp"].iloc[0]) > messages.clock_seconds(f"{SOURCE_END} 16:00:00")
