"""The real great-expectations suite against real files, each with one kind of defect."""

import json

import numpy as np
import pandas as pd
import pytest

from neuropredict import validation
from neuropredict.errors import DataValidationError
from neuropredict.settings.schema import ValidateParams
from tests.conftest import REPO

GOOD = pd.read_csv(REPO / "data" / "snapshot" / "daily" / "AAPL.csv").iloc[:300]


def _defect(kind: str) -> pd.DataFrame:
    f = GOOD.copy()
    if kind == "null":
        f.loc[10, "Close"] = np.nan
    elif kind == "duplicate_date":
        f.loc[11, "Date"] = f.loc[10, "Date"]
    elif kind == "high_below_low":
        f.loc[12, "High"] = f.loc[12, "Low"] - 1.0
    elif kind == "negative_price":
        f.loc[13, "Open"] = -5.0
    elif kind == "missing_column":
        f = f.drop(columns=["Volume"])
    elif kind == "non_numeric":
        f["Close"] = f["Close"].astype(object)
        f.loc[14, "Close"] = "12,5"  # a European decimal: text, not a number
    elif kind == "gap":
        f = f.drop(index=range(20, 30)).reset_index(drop=True)
    elif kind == "jump":
        f.loc[40:, ["Open", "High", "Low", "Close", "Adj Close"]] *= 3.0
    return f


# kind -> (expectation type, column) that must be named
EXPECTED = {
    "null": ("expect_column_values_to_not_be_null", "Close"),
    "duplicate_date": ("expect_column_values_to_be_unique", "Date"),
    "high_below_low": ("expect_column_pair_values_a_to_be_greater_than_b", "High >= Low"),
    "negative_price": ("expect_column_values_to_be_between", "Open"),
    "missing_column": ("expect_table_columns_to_match_set", "table"),
    "non_numeric": ("expect_column_values_to_be_in_type_list", "Close"),
    "gap": ("expect_column_values_to_be_between", validation.GAP_COLUMN),
    "jump": ("expect_column_values_to_be_between", validation.MOVE_COLUMN),
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    GOOD.to_csv(raw / "GOOD.csv", index=False)
    for kind in EXPECTED:
        _defect(kind).to_csv(raw / f"{kind.upper()}.csv", index=False)
    out = tmp_path_factory.mktemp("validation")
    symbols = ["GOOD", *(k.upper() for k in EXPECTED)]
    return validation.validate_files(raw, symbols, "1d", ValidateParams(max_gap_days=5, max_abs_log_return=0.4), out), out


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_each_defect_fails_naming_its_expectation_and_column(report, kind):
    rep, _ = report
    expectation, column = EXPECTED[kind]
    named = {(f.expectation, f.column) for f in rep.failures if f.file == f"{kind.upper()}.csv"}
    assert (expectation, column) in named, f"{kind}: got {named}"


def test_good_file_passes_every_expectation(report):
    rep, _ = report
    assert not [f for f in rep.failures if f.file == "GOOD.csv"]
    assert rep.files["GOOD.csv"]["failed_expectations"] == 0


def test_results_and_data_docs_are_written(report):
    rep, out = report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["success"] is False and len(summary["failures"]) == len(rep.failures)
    assert (out / "data_docs" / "index.html").is_file()
    assert json.loads((out / "results.json").read_text())["GOOD"]["success"] is True


def test_failure_message_lists_every_failure_per_file_and_column(report):
    rep, out = report
    with pytest.raises(DataValidationError) as err:
        validation.raise_on_failure(rep, out / "data_docs")
    text = str(err.value)
    assert "NULL.csv: Close: expect_column_values_to_not_be_null" in text
    assert "nothing downstream will run" in text


def test_bundled_snapshot_passes_daily_and_intraday(tmp_path):
    params = ValidateParams(max_gap_days=5, max_abs_log_return=0.4)
    daily = validation.validate_files(REPO / "data" / "snapshot" / "daily", ["NVDA", "TSLA"], "1d", params, tmp_path / "d")
    assert daily.success, daily.failures
    intraday_dir = tmp_path / "intraday"
    intraday_dir.mkdir()
    for s in ("AAPL", "MSFT"):
        (intraday_dir / f"{s}.csv").write_text((REPO / "data" / "snapshot" / "intraday" / f"{s}_1m.csv").read_text())
    intraday = validation.validate_files(intraday_dir, ["AAPL", "MSFT"], "1m", params, tmp_path / "i")
    assert intraday.success, intraday.failures
