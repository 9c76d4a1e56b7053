"""Stage tune: keras-tuner searches LSTM against GRU; every trial a nested MLflow run."""

from neuropredict import tracking, tuning
from neuropredict.console import run_main
from neuropredict.settings.paths import paths
from neuropredict.settings.schema import load_params


def main() -> None:
    params, project = load_params(), paths()
    with tracking.stage_run("tune", params.tune):
        report = tuning.run(params, project)
        print(f"tune: winner {report['winner'].upper()} (chosen on validation loss)")


if __name__ == "__main__":
    run_main(main)
