"""Why the served intervals run DtACI and not one ACI step: each fixed step beside DtACI's mixture
of eight, on the main project's test period (2024, calm) and the regime-2020 variant's (2020, the
crash), each on its own trained model (`dvc repro`, and `python bench/regime.py` first).

For each period and each way (static, ACI with one step, DtACI): pooled coverage, coverage in the
turbulent third of sessions, the interval score and its DM t against EWMA and GARCH (adaptive.py,
backtests.py; steps are shares of the registered quantile). Report: bench/results/online-steps.json.

    python bench/online_steps.py
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from neuropredict import adaptive, backtests, intervals, tracking
from neuropredict.features import load_price_series, series_splits
from neuropredict.files import write_json
from neuropredict.forecaster import Forecaster, forecast_period
from neuropredict.settings.paths import paths
from neuropredict.settings.schema import load_params

HERE = Path(__file__).resolve().parent
FIXED_STEPS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="regime-2020", help="the second period: this variant's workspace")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "online-steps.json")
    return ap.parse_args()


def period(root: Path) -> dict:
    params = load_params(root / "params.yaml")
    series = load_price_series(root / "data" / "raw", params.data.symbols, params.data.interval,
                               params.featurize.price_column)
    splits = series_splits(series, params.featurize)
    forecaster = Forecaster.load(root / "models" / "tuned" / "best")
    rows = forecast_period(forecaster, series, splits.test_start, splits.end)
    online = dataclasses.replace(forecaster.calibration, online=True)
    ways = {"static": rows, **{f"ACI {s:g}": adaptive.serve(rows, online, np.array([s])) for s in FIXED_STEPS},
            "DtACI": adaptive.serve(rows, online)}
    return {"test_period": splits.test_period, "rows": len(rows), "ways": {name: judge(served, forecaster.calibration.levels)
                                                                        for name, served in ways.items()}}


def judge(rows, levels) -> dict:
    scores = intervals.score(rows, levels)["_pooled"]
    conditional = backtests.conditional(rows, levels)["model"]
    return {intervals.label(p): {
        "coverage": scores[f"coverage_{intervals.label(p)}"],
        "coverage_high_volatility": conditional[intervals.label(p)]["coverage_high_volatility"],
        "interval_score": scores[f"interval_score_{intervals.label(p)}"],
        "dm_t_ewma": scores[f"interval_dm_t_ewma_{intervals.label(p)}"],
        "dm_t_garch": scores[f"interval_dm_t_garch_{intervals.label(p)}"]} for p in levels}


def main() -> int:
    args = parse_args()
    project = paths()
    stamp = tracking.measured("python bench/online_steps.py", project.root)
    report = {"measured": stamp, "steps": list(FIXED_STEPS), "dtaci_steps": adaptive.STEPS.tolist(),
              "periods": {"main": period(project.root), args.variant: period(project.variant_dir(args.variant))}}
    write_json(args.out, report)
    for name, p in report["periods"].items():
        print(f"{name} ({p['test_period']}):")
        for way, by_level in p["ways"].items():
            print(f"  {way:<10}" + "  ".join(f"{t} %: {m['coverage']:.1f} (high vol {m['coverage_high_volatility']:.1f}), "
                                             f"score {m['interval_score']:.3f}, DM t EWMA {m['dm_t_ewma']:+.2f} GARCH "
                                             f"{m['dm_t_garch']:+.2f}" for t, m in by_level.items()))
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
