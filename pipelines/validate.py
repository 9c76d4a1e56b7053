"""Stage validate: the great-expectations suite over every raw file; stops the pipeline on bad data."""

import mlflow  # after neuropredict: its quiet logging defaults apply  # noqa: E402

from neuropredict import tracking, validation
from neuropredict.console import run_main
from neuropredict.settings.paths import paths
from neuropredict.settings.schema import load_params


def main() -> None:
    params, project = load_params(), paths()
    with tracking.stage_run("validate", params.validate):
        report = validation.validate_files(project.raw_dir, params.data.symbols, params.data.interval,
                                           params.validate, project.validation_dir)
        mlflow.log_metrics({"files": len(report.files), "failed_expectations": len(report.failures)})
        mlflow.log_artifacts(str(project.validation_dir), "validation")
        validation.raise_on_failure(report, project.validation_dir / "data_docs")
        print(f"validate: {len(report.files)} files passed every expectation "
              f"(Data Docs: {project.validation_dir / 'data_docs' / 'index.html'})")


if __name__ == "__main__":
    run_main(main)
