"""Stage featurize: leakage-free windows, date splits, a scaler fitted on the training period only."""


import mlflow  # after neuropredict: its quiet logging defaults apply  # noqa: E402

from neuropredict import features, tracking
from neuropredict.console import run_main
from neuropredict.files import write_json
from neuropredict.settings.paths import paths
from neuropredict.settings.schema import load_params


def main() -> None:
    params, project = load_params(), paths()
    with tracking.stage_run("featurize", params.featurize):
        summary = features.build(params.featurize, project.raw_dir, project.features_dir, params.data.symbols,
                                 params.data.interval)
        write_json(project.metrics_dir / "featurize.json", summary)
        mlflow.log_metrics({f"{s}_rows": summary[s]["rows"] for s in features.SPLITS})
        mlflow.log_params({f"{s}_targets": f"{summary[s]['first_target']}..{summary[s]['last_target']}"
                           for s in features.SPLITS})
        mlflow.log_artifact(str(project.features_dir / features.SCALER_FILE), "features")
        print("featurize: " + ", ".join(f"{s} {summary[s]['rows']} windows" for s in features.SPLITS))


if __name__ == "__main__":
    run_main(main)
