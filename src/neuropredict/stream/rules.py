"""The data-quality rules a live tick must pass before it enters a window or the live metrics.

They are the stream's side of the `validate` stage, with the same threshold
(`validate.max_abs_log_return`): a tick must be later than its symbol's last accepted tick, and
its price must not move more than the threshold (as a log return) from the last accepted price.
A tick that breaks a rule goes to the dead-letter topic with the reason.

A lasting level change (an unadjusted split in a live feed) must not lock a symbol out for good:
after `serving.level_shift_ticks` consecutive rejected ticks that agree with one another (each
within the threshold of the one before), the last of them is accepted as a new level. The
symbol's window then restarts there (warm-up follows), and the forecast open across the break is
not scored: it was made for a price level that no longer exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from neuropredict.settings.schema import ServingParams, ValidateParams

NEW_LEVEL = "new level"  # the verdict of a tick accepted as a new price level


@dataclass(frozen=True)
class TickRules:
    max_abs_log_return: float
    level_shift_ticks: int

    @classmethod
    def from_params(cls, validate: ValidateParams, serving: ServingParams) -> TickRules:
        return cls(validate.max_abs_log_return, serving.level_shift_ticks)


@dataclass
class Guard:
    """One symbol's last accepted tick, and a candidate new price level being confirmed."""

    last_time: float = -math.inf
    last_price: float = math.nan
    last_timestamp: str = ""
    shift_count: int = 0          # consecutive rejected jumps that agree with one another ...
    shift_price: float = math.nan  # ... and the price of the latest of them
    level: int = 0                # how many new levels were accepted: part of the segment key

    def check(self, symbol: str, times: np.ndarray, prices: np.ndarray, stamps: list[str],
              rules: TickRules) -> list[str | None] | None:
        """Verdicts for a run of one symbol's ticks, in order: None (accepted), NEW_LEVEL
        (accepted; the window restarts) or the reason it is rejected. Returns None when every
        tick is accepted (the common case, checked in one vectorised pass)."""
        if not self.shift_count and len(times):
            prev_t = np.concatenate(([self.last_time], times[:-1]))
            prev_p = np.concatenate(([self.last_price], prices[:-1]))
            with np.errstate(invalid="ignore"):
                moves = np.abs(np.log(prices / prev_p))
            if (times > prev_t).all() and not (moves > rules.max_abs_log_return).any():
                self._accept(times[-1], prices[-1], stamps[-1])
                return None
        return [self._check_one(symbol, float(t), float(p), s, rules) for t, p, s in zip(times, prices, stamps)]

    def _check_one(self, symbol: str, time_s: float, price: float, stamp: str, rules: TickRules) -> str | None:
        if time_s <= self.last_time:
            if time_s == self.last_time:
                return f"duplicate: {symbol} already has a tick at {self.last_timestamp}"
            return f"out of order: {stamp} is before {symbol}'s last accepted tick ({self.last_timestamp})"
        limit = rules.max_abs_log_return
        move = float(np.log(price / self.last_price)) if self.last_price == self.last_price else 0.0
        if abs(move) <= limit:  # np.log, as the vectorised path: the same decision at the threshold
            self._accept(time_s, price, stamp)
            return None
        agrees = self.shift_count and abs(float(np.log(price / self.shift_price))) <= limit
        self.shift_count = self.shift_count + 1 if agrees else 1
        self.shift_price = price
        if self.shift_count >= rules.level_shift_ticks:
            self._accept(time_s, price, stamp)
            self.level += 1
            return NEW_LEVEL
        return (f"implausible move: {price:g} is a log return of {move:+.3f} from {symbol}'s last accepted "
                f"price {self.last_price:g} (limit validate.max_abs_log_return = {limit:g}); "
                f"{rules.level_shift_ticks - self.shift_count} more tick(s) at this level restart its window")

    def _accept(self, time_s: float, price: float, stamp: str) -> None:
        self.last_time, self.last_price, self.last_timestamp = float(time_s), float(price), stamp
        self.shift_count, self.shift_price = 0, math.nan


def reason_code(reason: str) -> str:
    """A short, countable kind for a dead letter's reason."""
    for code in ("duplicate", "out of order", "implausible move"):
        if reason.startswith(code):
            return code.replace(" ", "_").replace("implausible_move", "jump")
    return "malformed"
