"""Logging set-up and the error boundary shared by the CLI and the stage scripts."""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Callable

from neuropredict.errors import NeuropredictError

QUIET_LOGGERS = ("great_expectations", "mlflow", "alembic", "kafka", "urllib3", "yfinance", "absl",
                 "h5py", "matplotlib", "tensorflow", "keras_tuner", "py.warnings", "git")
# Libraries whose failures we report ourselves, in one line (yfinance offline logs ~20 errors
# before `sources` says "yfinance unavailable ...; using the bundled snapshot"): --verbose only.
SPOKEN_FOR = ("yfinance",)
# Library warnings nobody can act on: kafka-python's IO thread timing itself on a busy machine.
# kafka-python's own "Bootstrap failed" when no broker answers: our one-line error says it, with the fix.
NOT_ACTIONABLE = (("kafka.net.selector", "is blocking the event loop"), ("kafka.net.manager", "Bootstrap failed"))


def tool(name: str) -> str:
    """A command installed in this environment (.venv/bin/dvc), whatever PATH says."""
    return os.path.join(os.path.dirname(sys.executable), name)


def tools_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment whose PATH finds this environment's tools first: DVC stages run `python`."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def configure_logging(verbose: bool = False) -> None:
    """Configure the root logger once, in the entry point; modules only call getLogger."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr, force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_libraries)
        handler.addFilter(RateLimit())
        if not verbose:
            handler.addFilter(_not_spoken_for)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*Skipping variable loading for optimizer.*")
    warnings.filterwarnings("ignore", module="sqlalchemy.*")


def _quiet_libraries(record: logging.LogRecord) -> bool:
    """Libraries speak only at WARNING and above (some reset their own logger levels on import)."""
    if record.levelno >= logging.WARNING:
        return True
    return not any(record.name == n or record.name.startswith(n + ".") for n in QUIET_LOGGERS)


def _not_spoken_for(record: logging.LogRecord) -> bool:
    if any(record.name == n or record.name.startswith(n + ".") for n in SPOKEN_FOR):
        return False
    return not any(record.name == n and text in str(record.msg) for n, text in NOT_ACTIONABLE)


class RateLimit(logging.Filter):
    """While a broker is down, kafka-python logs every reconnect attempt: pass one line per kind
    of message per `every_s` seconds, saying how many similar lines were held back."""

    def __init__(self, prefixes: tuple[str, ...] = ("kafka",), every_s: float = 30.0):
        super().__init__()
        self.prefixes, self.every_s = prefixes, every_s
        self._last: dict[tuple, float] = {}
        self._held: dict[tuple, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes):
            return True
        key = (record.name, record.levelno, str(record.msg)[:40])
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self.every_s:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} ({held} similar messages in the last {self.every_s:.0f} s held back)"
        return True


def verbose() -> bool:
    """$NEUROPREDICT_VERBOSE (or `neuropredict --verbose`, which sets it for the stages it runs)."""
    return os.environ.get("NEUROPREDICT_VERBOSE", "") not in ("", "0")


def run_main(main: Callable[[], object]) -> None:
    """Run an entry point: a NeuropredictError becomes one clear line and exit status 1."""
    configure_logging(verbose=verbose())
    try:
        result = main()
    except NeuropredictError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # the reader left (`neuropredict status | head -1`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would fail again
        sys.exit(0)
    sys.exit(result if isinstance(result, int) else 0)
