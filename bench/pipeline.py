"""Benchmark of the training pipeline and of the model call, in one run.

Measures, in a temporary copy of the project (its own git + DVC repo and MLflow store; the
user's mlruns/ is never touched):
  * seconds per stage of `dvc repro`, each stage run alone in order with
    `dvc repro --single-item <stage>`, and their total;
  * a no-op `dvc repro` (nothing changed), 3 times: median and samples;
  * model-call throughput (windows/s) of the tuned forecaster in models/tuned/best, per batch
    size, for the serving path `Forecaster.predict_next` (feature transform + one compiled call)
    and for the seed project's `model.predict(x, verbose=0)` on the same precomputed features.

    python bench/pipeline.py [--smoke] [--out PATH] [--keep-tmp]

Writes bench/results/pipeline.json (with --smoke: bench/results/pipeline-smoke.json, tiny params,
batch sizes 1 and 64, short timing) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from neuropredict import tracking
from neuropredict.scratch import copy_project, scratch_env

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = REPO / "bench" / "results"
STAGES = ("download", "validate", "featurize", "tune", "registry", "register")
ALWAYS_RUNS = "registry"  # it asks the tracking server which registry it is, on every `dvc repro`
NOOP_SAMPLES = 3
SYMBOL = "AAPL"

TINY_PARAMS = REPO / "tests" / "data" / "tiny_params.yaml"  # the tests' params: seconds per stage

# (batch sizes, minimum seconds of timed calls per measurement, most timed calls)
FULL_TIMING = ((1, 8, 64, 512, 4096), 0.5, 20_000)
SMOKE_TIMING = ((1, 64), 0.1, 2_000)


class BenchError(RuntimeError):
    """A command of the benchmark failed; the message holds the tail of its output."""


# ---- the project copy ----


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"{shlex.join(cmd)} failed ({proc.returncode}) in {cwd}\n"
                         f"--- stdout (tail) ---\n{proc.stdout[-3000:]}\n"
                         f"--- stderr (tail) ---\n{proc.stderr[-6000:]}")
    return proc


# ---- dvc repro timings ----


def timed_dvc(root: Path, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = run([str(BIN / "dvc"), *args], root, scratch_env(root))
    return time.perf_counter() - start, proc


def time_stages(root: Path) -> tuple[dict[str, float], float]:
    """Each stage alone, in order; (seconds per stage, wall seconds of the whole sequence)."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    for stage in STAGES:
        seconds[stage], _ = timed_dvc(root, "repro", "--single-item", stage)
        print(f"  {stage:<10} {seconds[stage]:8.2f} s", flush=True)
    return seconds, time.perf_counter() - start


def time_noop(root: Path) -> tuple[list[float], bool]:
    """Repeated `dvc repro` with nothing changed; also whether any of them ran a stage."""
    samples, ran = [], False
    for _ in range(NOOP_SAMPLES):
        elapsed, proc = timed_dvc(root, "repro")
        samples.append(elapsed)
        ran |= proc.stdout.replace(f"Running stage '{ALWAYS_RUNS}'", "").count("Running stage") > 0
    return samples, ran


# ---- model-call throughput ----


def price_windows(rng, batch: int, window: int):
    import numpy as np

    return 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, size=(batch, window)), axis=1))


def windows_per_s(call, batch: int, min_seconds: float, max_calls: int) -> float:
    """Warm up, then repeat `call` until min_seconds elapsed (or max_calls); windows per second."""
    call()
    call()
    calls, start = 0, time.perf_counter()
    while True:
        call()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or calls >= max_calls:
            return batch * calls / elapsed


def time_model_calls(model_dir: Path, timing: tuple) -> tuple[dict[str, dict[str, float]], int]:
    """windows/s per batch size for predict_next and model.predict; also the model's window."""
    import numpy as np

    from neuropredict.forecaster import Forecaster

    batches, min_seconds, max_calls = timing
    forecaster = Forecaster.load(model_dir)
    rng = np.random.default_rng(0)
    result: dict[str, dict[str, float]] = {"predict_next": {}, "model.predict": {}}
    for batch in batches:
        windows = price_windows(rng, batch, forecaster.window)
        symbols = [SYMBOL] * batch
        mu, sd = forecaster.scaler.stats(symbols)
        x = forecaster.scaler.to_model_input(windows, mu, sd)
        calls = {
            "predict_next": lambda: forecaster.predict_next(windows, symbols),
            "model.predict": lambda: forecaster.model.predict(x, verbose=0),
        }
        for name, call in calls.items():
            result[name][str(batch)] = windows_per_s(call, batch, min_seconds, max_calls)
        print(f"  batch {batch:>5}: predict_next {result['predict_next'][str(batch)]:12,.0f} windows/s, "
              f"model.predict {result['model.predict'][str(batch)]:12,.0f} windows/s", flush=True)
    return result, forecaster.window


# ---- report ----


def report(args, stage_seconds, total, noop, noop_ran, throughput, window) -> dict:
    return {
        "stage_seconds": stage_seconds,
        "repro_total_s": total,
        "noop_repro_s": statistics.median(noop),
        "noop_repro_samples": noop,
        "noop_repro_ran_a_stage": noop_ran,
        "windows_per_s": throughput,
        "model_window": window,
        "params": "smoke" if args.smoke else "default",
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "command": shlex.join([sys.executable, *sys.argv]),
        "measured": tracking.measured(" ".join(["python", *sys.argv]), root=REPO),  # the code's commit, not the copy's
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def print_table(r: dict) -> None:
    print(f"\npipeline benchmark ({r['params']} params, {r['machine']['cpu_count']} CPUs)")
    print(f"{'stage':<24}{'seconds':>12}")
    for stage, s in r["stage_seconds"].items():
        print(f"{stage:<24}{s:12.2f}")
    print(f"{'total (staged repro)':<24}{r['repro_total_s']:12.2f}")
    samples = ", ".join(f"{s:.2f}" for s in r["noop_repro_samples"])
    print(f"{'no-op repro (median)':<24}{r['noop_repro_s']:12.2f}   samples: {samples}")
    if r["noop_repro_ran_a_stage"]:
        print("  warning: a no-op repro ran a stage; the pipeline is not reproducible as staged")
    nxt, pred = r["windows_per_s"]["predict_next"], r["windows_per_s"]["model.predict"]
    print(f"\n{'batch':>6}{'predict_next w/s':>20}{'model.predict w/s':>20}{'ratio':>9}")
    for batch in nxt:
        print(f"{batch:>6}{nxt[batch]:20,.0f}{pred[batch]:20,.0f}{nxt[batch] / pred[batch]:8.1f}x")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny params, batch sizes 1 and 64, short timing (under ~90 s)")
    parser.add_argument("--out", type=Path, help="JSON report path (default bench/results/pipeline[-smoke].json)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary project copy")
    args = parser.parse_args(argv)
    args.out = args.out or RESULTS / ("pipeline-smoke.json" if args.smoke else "pipeline.json")
    return args


def bench(args: argparse.Namespace, root: Path) -> dict:
    print(f"project copy: {root}", flush=True)
    params = yaml.safe_load(TINY_PARAMS.read_text()) if args.smoke else None
    copy_project(REPO, root, params)
    # This process loads the model too: point its config at the copy, never at the user's store.
    os.environ.update(scratch_env(root))
    print("dvc repro, one stage at a time:", flush=True)
    stage_seconds, total = time_stages(root)
    print(f"no-op dvc repro x{NOOP_SAMPLES}...", flush=True)
    noop, noop_ran = time_noop(root)
    print("model-call throughput:", flush=True)
    throughput, window = time_model_calls(root / "models" / "tuned" / "best",
                                          SMOKE_TIMING if args.smoke else FULL_TIMING)
    return report(args, stage_seconds, total, noop, noop_ran, throughput, window)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="neuropredict-bench-"))
    try:
        result = bench(args, root)
    except BenchError as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep_tmp:
            print(f"kept the project copy: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"\nreport: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
