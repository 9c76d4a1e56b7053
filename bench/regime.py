"""The regime-change replay: the whole product on a variant that is trained through 2019 and tested
on 2020 (the COVID crash and its rebound), offline and streamed.

It runs `neuropredict demo --variant regime-2020` (params-regime-2020.yaml over params.yaml, in its
own workspace .neuropredict/regime-2020/, made afresh: `dvc repro` there, then a worker on the
embedded broker serves the replayed 2020 and `evaluate` scores the stream), then gathers its figures:

- offline: the tune stage's metrics/intervals.json (every interval method's test scores, coverage
  by volatility tercile and after jumps, the backtests' p-values) and metrics/test.json;
- streamed: evaluate's report of the worker's published intervals on the same ticks.

Report: bench/results/regime-2020.json; the tercile chart: docs/images/coverage-by-tercile-regime-2020.png.

    python bench/regime.py
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from neuropredict import tracking
from neuropredict.console import tool
from neuropredict.files import read_json, write_json
from neuropredict.settings.paths import paths

HERE = Path(__file__).resolve().parent


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="regime-2020")
    ap.add_argument("--out", type=Path)
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    project = paths()
    out = args.out or HERE / "results" / f"{args.variant}.json"
    command = f"python bench/regime.py --variant {args.variant}"
    stamp = tracking.measured(command, project.root)
    workspace = project.variant_dir(args.variant)
    shutil.rmtree(workspace, ignore_errors=True)  # its own store from scratch: production is this run's model
    done = subprocess.run([tool("neuropredict"), "demo", "--variant", args.variant], cwd=project.root)
    if done.returncode:
        print(f"the {args.variant} demo failed (exit {done.returncode}): no report written", file=sys.stderr)
        return done.returncode
    offline = read_json(workspace / "metrics" / "intervals.json")
    streamed = read_json(workspace / "reports" / "evaluate" / "report.json")
    write_json(out, {
        "measured": stamp, "variant": args.variant,
        "params_overlay": (project.variant_params_file(args.variant)).read_text(),
        "offline": {"calibration": offline["calibration"], "test": offline["test"],
                    "test_conditional": offline["test_conditional"],
                    "point": read_json(workspace / "metrics" / "test.json")["scores"]["_pooled"]},
        "streamed": {"rows": streamed["rows"], "first_target": streamed["first_target"],
                     "last_target": streamed["last_target"], "intervals": streamed["intervals"]["_pooled"],
                     "conditional": streamed["intervals_conditional"], "point": streamed["scores"]["_pooled"]},
    })
    image = project.root / "docs" / "images" / f"coverage-by-tercile-{args.variant}.png"
    shutil.copy2(workspace / "plots" / "coverage_by_tercile.png", image)
    print(f"report: {out}\nchart: {image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
