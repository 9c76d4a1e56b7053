"""The served intervals' online calibration, live: each symbol's tracked quantiles (adaptive.py)
move with every realised price of the batch before its forecasts are published.

The state is SymbolState.quantiles: per level, the quantile the open forecast was made with, its
outcome still to come. A batch first settles the open forecast (the symbol's first accepted tick,
in its segment, is its outcome), then tracks its own forecasts in turn: each realised by the next
accepted tick in the same segment, the last one left open. The state goes to the state topic with
the batch (stream/changelog.py), so a restart or a rewind goes on from the committed quantiles; a
new version starts from its own registered ones. Exactly what `adaptive.serve` does offline.
"""

from __future__ import annotations

import itertools
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
        for symbol, step in batch.steps.items():
            accepted = batch.accepted(symbol)
            if len(accepted) > 1:
                same = (step.sessions[1:] == step.sessions[:-1]) & (step.levels[1:] == step.levels[:-1])
                self.next_price[accepted[:-1]] = np.where(same, step.prices[1:], np.nan)
            self._settle_open(states[symbol], step)

    def _settle_open(self, st: SymbolState, step) -> None:
        """A new version starts from its registered quantiles; else the open forecast's outcome moves them."""
        cal = self.calibration
        if st.quantiles_version != self.version:
            st.quantiles = {intervals.label(p): cal.quantiles["model"][intervals.label(p)] for p in cal.levels}
            st.quantiles_version = self.version
            return
        o = st.open
        if (not len(step.accepted) or math.isnan(o.forecast) or o.version != self.version
                or (o.session, o.level) != (int(step.sessions[0]), int(step.levels[0]))):
            return
        actual = float(step.prices[0])
        for level in cal.levels:
            j = o.keys.index(("model", level))
            miss = not o.bounds[2 * j] <= actual <= o.bounds[2 * j + 1]
            tag = intervals.label(level)
            st.quantiles[tag] = max(0.0, st.quantiles[tag] + self._eta(level) * (miss - (1.0 - level)))

    def _eta(self, level: float) -> float:
        return self.calibration.online_step * self.calibration.quantiles["model"][intervals.label(level)]

    def adapt(self, forecast: Forecast, ticks: np.ndarray) -> Forecast:
        """The chunk's forecasts (at these ticks, a symbol's in order, chunks in order) with the
        served bounds as the model's and the static ones as `conformal`."""
        if not self.on:
            return forecast
        bounds = adaptive.with_static(forecast.bounds, self.calibration.levels)
        last = np.fromiter((self.batch.ticks[i].price for i in ticks.tolist()), np.float64, len(ticks))
        realised = np.log(self.next_price[ticks] / last)
        symbols = [self.batch.ticks[i].symbol for i in ticks.tolist()]
        for level in self.calibration.levels:
            tag, q0 = intervals.label(level), self.calibration.quantiles["model"][intervals.label(level)]
            lower, upper = (bounds[intervals.column(intervals.STATIC, side, level)] for side in ("lower", "upper"))
            centre, scale = adaptive.centre_and_scale(last, lower, upper, q0)
            used, start = np.empty(len(ticks)), 0
            for symbol, run in itertools.groupby(symbols):
                rows = slice(start, start + len(list(run)))
                st = self.states[symbol]
                used[rows], st.quantiles[tag] = adaptive.track(st.quantiles[tag], self._eta(level), level,
                                                               centre[rows], scale[rows], realised[rows])
                start = rows.stop
            bounds[intervals.column("model", "lower", level)] = last * np.exp(centre - used * scale)
            bounds[intervals.column("model", "upper", level)] = last * np.exp(centre + used * scale)
        return Forecast(forecast.price, bounds)
