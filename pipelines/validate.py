"""Stage validate: the great-expectations suite over every raw file; stops the pipeline on bad data."""

import mlflow

from neuropredict import tracking, validation
from neuropredict.config import load_params, paths
from neuropredict.console import run_main


def main() -> None:
    params, p = load_params(), paths()
    with tracking.stage_run("validate", params.validate):
        report = validation.validate_files(p.raw_dir, params.data.symbols, params.data.interval,
                                           params.validate, p.validation_dir)
        mlflow.log_metrics({"files": len(report.files), "failed_expectations": len(report.failures)})
        mlflow.log_artifacts(str(p.validation_dir), "validation")
        validation.raise_on_failure(report, p.validation_dir / "data_docs")
        print(f"validate: {len(report.files)} files passed every expectation "
              f"(Data Docs: {p.validation_dir / 'data_docs' / 'index.html'})")


if __name__ == "__main__":
    run_main(main)
