"""The daily loop with the real commands, on real prices: ticks -> retrain -> challenger -> promote.

In a scratch copy of this project (its own DVC cache and MLflow store; yours are never touched)
whose source data ends on --source-end (the bundled snapshot cut there: a source that lags, as
when Yahoo is away), with `data.end: latest` and a shorter search (--trials per cell,
--epochs) so the run takes minutes:
  1. `dvc repro` trains and registers v1 (production);
  2. a worker (`neuropredict serve`, embedded broker) scores the real closes of the next sessions
     up to --retrain-at, as a feed would send them;
  3. `neuropredict retrain` brings those ticks into the data: the splits move, v2 is registered
     and gated against v1 on the same new test rows;
  4. the worker, which now also scores v2 in shadow, scores the sessions after --retrain-at;
  5. `neuropredict compare` and `neuropredict promote 2` read that evidence; `neuropredict history`.
Every command's output goes to bench/results/daily_loop.json (docs/operations.md quotes it).

    python bench/daily_loop.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from neuropredict import brokers, kafka_io, producer, retry, scratch, tracking
from neuropredict.console import configure_logging, tool, tools_env
from neuropredict.messages import Tick
from neuropredict.settings.contracts import Topics
from neuropredict.settings.schema import params_from_dict

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source-end", default="2024-10-31", help="the source's newest bar")
    ap.add_argument("--retrain-at", default="2024-11-29", help="the last session streamed before `retrain`")
    ap.add_argument("--trials", type=int, default=1, help="tune.trials_per_cell of the scratch copy")
    ap.add_argument("--epochs", type=int, default=10, help="tune.max_epochs of the scratch copy")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "daily_loop.json")
    return ap.parse_args()


def run(root: Path, env: dict, *args: str, check: bool = True) -> dict:
    """A command's output for the report; with check, a failure ends the run."""
    started = time.monotonic()
    proc = subprocess.run(list(args), cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    out = {"command": " ".join(a if not a.startswith("/") else Path(a).name for a in args),
           "exit_code": proc.returncode, "stdout": proc.stdout.rstrip(), "stderr": proc.stderr.rstrip(),
           "seconds": time.monotonic() - started}
    if check and proc.returncode != 0:
        sys.exit(f"{out['command']} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return out


def cli(root: Path, env: dict, *args: str, check: bool = True) -> dict:
    return run(root, env, tool("neuropredict"), *args, check=check)


def feed(symbols, after: str, until: str | None) -> list[Tick]:
    """The real daily closes in (after, until], stamped at the close, in time order."""
    ticks = []
    for symbol in symbols:
        frame = pd.read_csv(REPO / "data/snapshot/daily" / f"{symbol}.csv")
        keep = (frame["Date"] > after) & ((frame["Date"] <= until) if until else True)
        ticks += [Tick(f"{d} 16:00:00", symbol, float(c)) for d, c in zip(frame.loc[keep, "Date"], frame.loc[keep, "Close"])]
    return sorted(ticks, key=lambda t: (t.timestamp, t.symbol))


def scored(bootstrap: str, topic: str) -> int:
    with kafka_io.TopicReader(bootstrap) as reader:
        return len(reader.read_all([topic]))


def main() -> int:
    args = parse_args()
    configure_logging()
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    changes = {"data": {"end": "latest", "source": "snapshot"},
               "tune": {"trials_per_cell": args.trials, "max_epochs": args.epochs}}
    raw_params = scratch.overlay(base, changes)
    params = params_from_dict(raw_params)
    topics = Topics()
    with tempfile.TemporaryDirectory(prefix="bench-daily-loop-") as tmp:
        root = scratch.copy_project(REPO, Path(tmp) / "project", raw_params)
        for symbol in params.data.symbols:
            path = root / "data/snapshot/daily" / f"{symbol}.csv"
            frame = pd.read_csv(path)
            frame[frame["Date"] <= args.source_end].to_csv(path, index=False)
        env = tools_env(scratch.scratch_env(root))
        steps = {"repro": run(root, env, tool("dvc"), "repro")}
        print("trained v1", flush=True)
        broker = brokers.start_scratch_broker("tansu", Path(tmp) / "kafka", params.kafka, topics=topics)
        env["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
        log_path = Path(tmp) / "serve.log"
        worker = subprocess.Popen([tool("neuropredict"), "serve"], cwd=root, env=env, stdout=subprocess.DEVNULL,
                                  stderr=open(log_path, "w"))
        try:
            report = loop(args, root, env, broker.bootstrap, topics, params, steps, log_path)
        finally:
            worker.terminate()
            worker.wait(60)
            broker.stop()
    report["measured"] = tracking.measured("python bench/daily_loop.py", REPO)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {args.out}")
    return 0


def loop(args, root: Path, env: dict, bootstrap: str, topics: Topics, params, steps: dict, log_path: Path) -> dict:
    window = params.featurize.window
    days = pd.read_csv(REPO / "data/snapshot/daily" / f"{params.data.symbols[0]}.csv")["Date"]
    lead_from = days[days <= args.source_end].iloc[-window - 1]  # a window of lead-in: the stream ran before
    first = feed(params.data.symbols, lead_from, args.retrain_at)
    producer.publish(first, topics.prices, bootstrap=bootstrap, serving=params.serving)
    expected = producer.expected_forecasts(first, window, False)
    retry.wait_until(lambda: scored(bootstrap, topics.predictions) >= expected, 300,
                     "the first sessions to be scored", every_s=1.0)
    steps["retrain"] = cli(root, env, "retrain")
    steps["models"] = cli(root, env, "models")
    name = params.register.model_name
    retry.wait_until(lambda: f"{name}@challenger: v2 loaded" in log_path.read_text() or "-> v2" in log_path.read_text(),
                     120, "the worker to load v2 (in shadow, or as production)", every_s=1.0)
    later = feed(params.data.symbols, args.retrain_at, None)
    shadow_before = scored(bootstrap, topics.shadow_predictions)
    producer.publish(later, topics.prices, bootstrap=bootstrap, serving=params.serving)
    retry.wait_until(lambda: scored(bootstrap, topics.shadow_predictions) - shadow_before >= len(later), 300,
                     "the later sessions to be scored by both", every_s=1.0)
    steps["compare"] = cli(root, env, "compare", "--no-mlflow")
    steps["promote"] = cli(root, env, "promote", "2", check=False)  # a refusal is an outcome to show
    steps["history"] = cli(root, env, "history")
    return {"source_end": args.source_end, "retrain_at": args.retrain_at, "window": window,
            "ticks_before_retrain": len(first), "ticks_after_retrain": len(later),
            "tune": {"trials_per_cell": args.trials, "max_epochs": args.epochs},
            "last_session": later[-1].timestamp[:10], "steps": steps}


if __name__ == "__main__":
    sys.exit(main())
