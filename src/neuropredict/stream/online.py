"""The served intervals' online calibration, live: each symbol's tracked quantiles (adaptive.py)
move with every realised price of the batch before its forecasts are published.

The state is SymbolState.quantiles: per level, the trackers' quantiles and weights the open
forecast's interval was made with (adaptive.py), its outcome still to come. A batch first settles
the open forecast (the symbol's first accepted tick, in its segment, is its outcome), then tracks
its own forecasts in turn: each realised by the next accepted tick in the same segment, the last
one left open. The state goes to the state topic with
the batch (stream/changelog.py), so a restart or a rewind goes on from the committed quantiles; a
new version starts from its own registered ones. Exactly what `adaptive.serve` does offline.
"""

from __future__ import annotations

import math

import numpy as np

from neuropredict import adaptive, intervals
from neuropredict.forecaster import Forecast
from neuropredict.stream.batch import Batch
from neuropredict.stream.state import SymbolState


class OnlineIntervals:
    """One batch of one model: turns each chunk's static bounds into the served ones."""

    def __init__(self, calibration, version: str, states: dict[str, SymbolState], batch: Batch):
        self.on = adaptive.is_online(calibration)
        if not self.on:
            return
        self.calibration, self.version, self.states, self.batch = calibration, version, states, batch
        self.next_price = np.full(len(batch.ticks), np.nan)  # the price each tick's forecast is realised at
        self.symbols = list(batch.steps)
        self.symbol_code = np.zeros(len(batch.ticks), dtype=np.int64)  # each tick's symbol, as its index
        for code, symbol in enumerate(self.symbols):
            self.symbol_code[batch.by_symbol[symbol]] = code
        for symbol, step in batch.steps.items():
            accepted = batch.accepted(symbol)
            if len(accepted) > 1:
                same = (step.sessions[1:] == step.sessions[:-1]) & (step.levels[1:] == step.levels[:-1])
                self.next_price[accepted[:-1]] = np.where(same, step.prices[1:], np.nan)
        self._settle_opens()

    def _q0(self, level: float) -> float:
        return self.calibration.quantiles["model"][intervals.label(level)]

    def _settle_opens(self) -> None:
        """A new version starts afresh; else each open forecast's outcome (the symbol's first
        accepted tick, in its segment) moves the trackers."""
        settled = []
        for symbol, step in self.batch.steps.items():
            st = self.states[symbol]
            if st.quantiles_version != self.version:
                st.quantiles = {intervals.label(p): adaptive.start(self._q0(p)) for p in self.calibration.levels}
                st.quantiles_version = self.version
                continue
            o = st.open
            if (len(step.accepted) and not math.isnan(o.forecast) and o.version == self.version
                    and (o.session, o.level) == (int(step.sessions[0]), int(step.levels[0]))):
                settled.append((st, o, math.log(float(step.prices[0]) / o.price)))
        if not settled:
            return
        for level in self.calibration.levels:
            tag, q0 = intervals.label(level), self._q0(level)
            static = np.array([o.bounds[2 * o.keys.index((intervals.STATIC, level)) + np.arange(2)] for _, o, _ in settled])
            prices = np.array([o.price for _, o, _ in settled])
            centre, scale = adaptive.centre_and_scale(prices, static[:, 0], static[:, 1], q0)
            _, after = adaptive.track(np.array([st.quantiles[tag] for st, _, _ in settled]), q0, level, centre[:, None],
                                      scale[:, None], np.array([[r] for _, _, r in settled]))
            for (st, _, _), state in zip(settled, after.tolist()):
                st.quantiles[tag] = state

    def adapt(self, forecast: Forecast, ticks: np.ndarray) -> Forecast:
        """The chunk's forecasts (at these ticks, a symbol's in order, chunks in order) with the
        served bounds as the model's and the static ones as `conformal`."""
        if not self.on:
            return forecast
        bounds = adaptive.with_static(forecast.bounds, self.calibration.levels)
        all_ticks = self.batch.ticks
        last = np.fromiter((all_ticks[i].price for i in ticks.tolist()), np.float64, len(ticks))
        realised = np.log(self.next_price[ticks] / last)
        codes = self.symbol_code[ticks]
        by_code = np.argsort(codes, kind="stable")  # each symbol's rows of the chunk, in time order
        groups = np.split(by_code, np.flatnonzero(np.diff(codes[by_code])) + 1)
        runs = [(self.symbols[codes[rows[0]]], rows) for rows in groups]
        levels = self.calibration.levels
        tags = [intervals.label(level) for level in levels]
        static = [adaptive.centre_and_scale(last, *(bounds[intervals.column(intervals.STATIC, side, level)]
                                                    for side in ("lower", "upper")), self._q0(level))
                  for level in levels]
        # every level's series in one call: rows level by level, each level's symbols in turn
        used, after = adaptive.track(
            np.array([self.states[symbol].quantiles[tag] for tag in tags for symbol, _ in runs]),
            np.repeat([self._q0(level) for level in levels], len(runs)), np.repeat(levels, len(runs)),
            np.vstack([adaptive.padded(groups, centre) for centre, _ in static]),
            np.vstack([adaptive.padded(groups, scale) for _, scale in static]),
            np.tile(adaptive.padded(groups, realised), (len(levels), 1)))
        for n, (level, tag, (centre, scale)) in enumerate(zip(levels, tags, static)):
            served = np.empty(len(ticks))
            for i, (symbol, rows) in enumerate(runs, start=n * len(runs)):
                served[rows] = used[i, :len(rows)]
                self.states[symbol].quantiles[tag] = after[i].tolist()
            bounds[intervals.column("model", "lower", level)] = last * np.exp(centre - served * scale)
            bounds[intervals.column("model", "upper", level)] = last * np.exp(centre + served * scale)
        return Forecast(forecast.price, bounds)
