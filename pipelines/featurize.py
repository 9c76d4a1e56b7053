"""Stage featurize: leakage-free windows, date splits, a scaler fitted on the training period only."""

import json

import mlflow

from neuropredict import features, tracking
from neuropredict.config import load_params, paths
from neuropredict.console import run_main


def main() -> None:
    params, p = load_params(), paths()
    with tracking.stage_run("featurize", params.featurize):
        summary = features.build(params.featurize, p.raw_dir, p.features_dir, params.data.symbols,
                                 params.data.interval)
        p.metrics_dir.mkdir(exist_ok=True)
        (p.metrics_dir / "featurize.json").write_text(json.dumps(summary, indent=2) + "\n")
        mlflow.log_metrics({f"{s}_rows": summary[s]["rows"] for s in features.SPLITS})
        mlflow.log_params({f"{s}_targets": f"{summary[s]['first_target']}..{summary[s]['last_target']}"
                           for s in features.SPLITS})
        mlflow.log_artifact(str(p.features_dir / features.SCALER_FILE), "features")
        print("featurize: " + ", ".join(f"{s} {summary[s]['rows']} windows" for s in features.SPLITS))


if __name__ == "__main__":
    run_main(main)
