"""The one home of waiting and retrying: `wait_until` polls a condition within a deadline,
`Backoff` spaces the attempts of a loop that retries while something is away, and `retry`
calls a function until it succeeds.

Why not tenacity: these loops need a stop event (a worker's SIGTERM ends every wait at once), a
log line per retry that says what is being waited for, and the product's one-line errors; the
three pieces below are shorter than the adapters tenacity would need, and add no dependency.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from neuropredict.errors import ServiceError

log = logging.getLogger(__name__)
T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout_s: float, what: str, every_s: float = 0.2,
               stop: threading.Event | None = None, error: type[Exception] = ServiceError) -> T:
    """condition() until it returns something true (which is returned); after timeout_s an
    `error` naming `what`. A condition may raise to give up at once (a process that died)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout_s:g} s waiting for {what}")
        if stop is not None:
            if stop.wait(every_s):
                raise error(f"stopped while waiting for {what}")
        else:
            time.sleep(every_s)


class Backoff:
    """Delays that double from first_s up to most_s after each failure; reset() after a success."""

    def __init__(self, first_s: float = 1.0, most_s: float = 30.0):
        self.first_s, self.most_s = first_s, most_s
        self.delay_s = first_s

    def reset(self) -> None:
        self.delay_s = self.first_s

    def next(self) -> float:
        """The delay to wait now; the one after it doubles."""
        delay, self.delay_s = self.delay_s, min(self.delay_s * 2, self.most_s)
        return delay

    def wait(self, stop: threading.Event | None = None) -> bool:
        """Sleep the next delay; True when `stop` was set meanwhile (the caller gives up)."""
        delay = self.next()
        if stop is None:
            time.sleep(delay)
            return False
        return stop.wait(delay)


def retry(call: Callable[[], T], what: str, backoff: Backoff | None = None,
          retry_on: tuple[type[BaseException], ...] = (Exception,), stop: threading.Event | None = None,
          attempts: int | None = None, level: int = logging.WARNING,
          on_retry: Callable[[], object] | None = None,
          retry_if: Callable[[BaseException], bool] = lambda exc: True) -> T:
    """call() until it returns, retrying on `retry_on` with backoff and a log line saying why
    (and on_retry() before each wait); a failure that retry_if rejects, or the last one when
    `attempts` run out or `stop` is set, is raised."""
    backoff = backoff or Backoff()
    tried = 0
    while True:
        try:
            return call()
        except retry_on as exc:
            tried += 1
            if (not retry_if(exc) or (attempts is not None and tried >= attempts)
                    or (stop is not None and stop.is_set())):
                raise
            log.log(level, "%s (%s: %s); retrying in %.1f s", what, type(exc).__name__,
                    str(exc).splitlines()[0][:200] if str(exc) else "", backoff.delay_s)
            if on_retry is not None:
                on_retry()
            if backoff.wait(stop):
                raise

