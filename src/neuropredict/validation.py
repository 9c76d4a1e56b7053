"""The great-expectations suite every raw price file must pass before anything is trained on it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neuropredict.errors import DataValidationError
from neuropredict.files import write_json
from neuropredict.settings.schema import ValidateParams
from neuropredict.sources import RAW_COLUMNS

log = logging.getLogger(__name__)

# Derived columns: great-expectations checks values row by row, so a gap or a move is a column.
GAP_COLUMN = "gap_days (between consecutive rows)"
MOVE_COLUMN = "Close log return (one step)"
NUMERIC_TYPES = ["float64", "float32", "int64", "int32", "Float64", "Int64"]


@dataclass(frozen=True)
class Failure:
    """One failed expectation on one file, in words a person can act on."""

    file: str
    expectation: str
    column: str
    detail: str

    def __str__(self) -> str:
        return f"{self.file}: {self.column}: {self.expectation} ({self.detail})"


@dataclass
class ValidationReport:
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return not self.failures

    def summary(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "files": self.files,
            "failures": [f.__dict__ for f in self.failures],
        }


def build_expectations(interval: str, params: ValidateParams) -> list[Any]:
    """The suite: columns and types, no nulls, ordered unique times, sane OHLC, bounded moves."""
    import great_expectations as gx

    e = gx.expectations
    columns = list(RAW_COLUMNS[interval])
    tcol = columns[0]
    numeric = [c for c in columns if c != tcol]
    derived = [GAP_COLUMN, MOVE_COLUMN]
    suite: list[Any] = [e.ExpectTableColumnsToMatchSet(column_set=columns + derived, exact_match=True)]
    suite += [e.ExpectColumnValuesToNotBeNull(column=c) for c in columns]
    suite += [e.ExpectColumnValuesToBeInTypeList(column=c, type_list=NUMERIC_TYPES) for c in numeric]
    suite += [
        e.ExpectColumnValuesToBeUnique(column=tcol),
        e.ExpectColumnValuesToBeIncreasing(column=tcol, strictly=True),
    ]
    suite += [e.ExpectColumnValuesToBeBetween(column=c, min_value=0, strict_min=True)
              for c in numeric if c != "Volume"]
    suite.append(e.ExpectColumnValuesToBeBetween(column="Volume", min_value=0))
    for other in ("Open", "Close", "Low"):
        suite.append(e.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="High", column_B=other, or_equal=True, ignore_row_if="either_value_is_missing"))
    for other in ("Open", "Close"):
        suite.append(e.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A=other, column_B="Low", or_equal=True, ignore_row_if="either_value_is_missing"))
    suite.append(e.ExpectColumnValuesToBeBetween(column=GAP_COLUMN, max_value=params.max_gap_days))
    bound = params.max_abs_log_return
    suite.append(e.ExpectColumnValuesToBeBetween(column=MOVE_COLUMN, min_value=-bound, max_value=bound))
    return suite


def with_derived_columns(frame: pd.DataFrame, interval: str) -> pd.DataFrame:
    """Add the gap and one-step-move columns; unparsable values become NaN (caught elsewhere)."""
    tcol = RAW_COLUMNS[interval][0]
    out = frame.copy()
    if tcol in out:
        times = pd.to_datetime(out[tcol], errors="coerce", utc=True)
        out[tcol] = times
        out[GAP_COLUMN] = times.diff().dt.total_seconds() / 86400.0
    else:
        out[GAP_COLUMN] = np.nan
    if "Close" in out:
        close = pd.to_numeric(out["Close"], errors="coerce")
        close = close.where(close > 0)
        out[MOVE_COLUMN] = np.log(close).diff()
    else:
        out[MOVE_COLUMN] = np.nan
    return out


class Validator:
    """A great-expectations context with the suite and a Data Docs site in a fixed folder."""

    def __init__(self, interval: str, params: ValidateParams, docs_dir: Path):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.interval = interval
        self.ctx = gx.get_context(mode="ephemeral")
        self.ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.docs_dir = Path(docs_dir)
        self.ctx.add_data_docs_site(
            site_name="neuropredict",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                                  "base_directory": str(self.docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        self.suite = self.ctx.suites.add(
            gx.ExpectationSuite(name=f"raw_prices_{interval}", expectations=build_expectations(interval, params))
        )
        self.source = self.ctx.data_sources.add_pandas("raw_prices")
        self._gx = gx

    def validate(self, name: str, frame: pd.DataFrame) -> tuple[list[Failure], dict[str, Any]]:
        """Run the suite on one file's frame; return its failures and its JSON result."""
        gx = self._gx
        asset = self.source.add_dataframe_asset(name.replace(".", "_"))
        batch = asset.add_batch_definition_whole_dataframe("all")
        vd = self.ctx.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate_{name}", data=batch, suite=self.suite))
        checkpoint = self.ctx.checkpoints.add(gx.Checkpoint(
            name=f"checkpoint_{name}", validation_definitions=[vd],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["neuropredict"])],
            result_format={"result_format": "SUMMARY"},
        ))
        result = checkpoint.run(batch_parameters={"dataframe": with_derived_columns(frame, self.interval)})
        failures: list[Failure] = []
        payload: dict[str, Any] = {}
        for vr in result.run_results.values():
            payload = vr.to_json_dict()
            failures += [_describe(name, r) for r in vr.results if not r.success]
        return failures, payload


def _describe(file: str, r: Any) -> Failure:
    cfg = r.expectation_config
    kwargs = cfg.kwargs
    column = kwargs.get("column") or (
        f"{kwargs['column_A']} >= {kwargs['column_B']}" if "column_A" in kwargs else "table")
    exc = (r.exception_info or {}) if isinstance(r.exception_info, dict) else {}
    if exc.get("raised_exception"):
        detail = "could not be evaluated: " + str(exc.get("exception_message", "")).splitlines()[0][:160]
    else:
        res = r.result or {}
        if "unexpected_count" in res:
            sample = res.get("partial_unexpected_list") or []
            detail = f"{res['unexpected_count']} bad rows, e.g. {_plain(sample[:3])}"
        elif "observed_value" in res:
            detail = f"observed {res['observed_value']}"
        else:
            detail = "failed"
    return Failure(file=file, expectation=cfg.type, column=str(column), detail=detail)


def _plain(values: list[Any]) -> str:
    """Sample values without numpy reprs: [(1.0, 27.8)] rather than [(np.float64(1.0), ...)]."""
    def one(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return tuple(one(x) for x in v)
        return v.item() if isinstance(v, np.generic) else v
    return str([one(v) for v in values])


def validate_files(raw_dir: Path, symbols: list[str] | tuple[str, ...], interval: str,
                   params: ValidateParams, out_dir: Path) -> ValidationReport:
    """Validate every raw file; write results JSON and Data Docs into out_dir (even on failure)."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    validator = Validator(interval, params, out_dir / "data_docs")
    report = ValidationReport()
    results = {}
    for symbol in symbols:
        path = raw_dir / f"{symbol}.csv"
        if not path.is_file():
            report.failures.append(Failure(path.name, "file_exists", "file", "missing: run the download stage"))
            continue
        frame = pd.read_csv(path)
        failures, results[symbol] = validator.validate(path.name, frame)
        report.files[path.name] = {"rows": len(frame), "failed_expectations": len(failures),
                                   "evaluated_expectations": len(validator.suite.expectations)}
        report.failures += failures
        log.info("validated %s: %d rows, %d failed expectations", path.name, len(frame), len(failures))
    validator.ctx.build_data_docs(site_names=["neuropredict"])
    write_json(out_dir / "results.json", results, indent=1)
    write_json(out_dir / "summary.json", report.summary())
    return report


def raise_on_failure(report: ValidationReport, docs_dir: Path) -> None:
    if report.success:
        return
    lines = "\n".join(f"  - {f}" for f in report.failures)
    raise DataValidationError(
        f"{len(report.failures)} expectation(s) failed; nothing downstream will run:\n{lines}\n"
        f"Fix or re-download the data (see the Data Docs: {docs_dir / 'index.html'})."
    )
