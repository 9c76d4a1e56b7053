"""Logging set-up and the error boundary shared by the CLI and the stage scripts."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable

from neuropredict.errors import NeuropredictError

QUIET_LOGGERS = ("great_expectations", "mlflow", "alembic", "kafka", "urllib3", "yfinance", "absl",
                 "h5py", "matplotlib", "tensorflow", "keras_tuner", "py.warnings", "git")


def configure_logging(verbose: bool = False) -> None:
    """Configure the root logger once, in the entry point; modules only call getLogger."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr, force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_libraries)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*Skipping variable loading for optimizer.*")
    warnings.filterwarnings("ignore", module="sqlalchemy.*")


def _quiet_libraries(record: logging.LogRecord) -> bool:
    """Libraries speak only at WARNING and above (some reset their own logger levels on import)."""
    if record.levelno >= logging.WARNING:
        return True
    return not any(record.name == n or record.name.startswith(n + ".") for n in QUIET_LOGGERS)


def run_main(main: Callable[[], object]) -> None:
    """Run an entry point: a NeuropredictError becomes one clear line and exit status 1."""
    configure_logging(verbose=bool(os.environ.get("NEUROPREDICT_VERBOSE")))
    try:
        result = main()
    except NeuropredictError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)
