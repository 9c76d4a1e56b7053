"""Promotion on live evidence, end to end, with the real commands: how long a bad production model
serves before the guard moves it back, how many forecasts it publishes, and what each command says.

In a scratch copy of this project (its own MLflow store; your mlruns/ is never touched) with a
private embedded broker:
  1. `register` registers the tuned model (v1, production), then the same model with its output
     shifted by three standard deviations of a day's return (v2: it fails the gate, challenger);
  2. two `neuropredict serve` workers and one `neuropredict guard` (params.yaml's defaults) score
     a replay of real daily closes from --start; the workers score v2 in shadow;
  3. `neuropredict compare`, then `promote 2` (refused), `promote 2 --force`, while the rest of the
     replay streams at --rate ticks/s; the guard rolls back; `neuropredict history`.
Figures and every command's output go to bench/results/promotion.json (the docs quote them), the
chart `compare` drew to bench/results/promotion-compare.png.

    python bench/promotion.py            # uses models/tuned and data/raw: run `dvc repro` first
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from neuropredict import brokers, kafka_io, messages, producer, promotions, registry, retry, scratch, tracking, workers
from neuropredict.console import configure_logging
from neuropredict.settings.contracts import PRODUCTION_ALIAS, Topics
from neuropredict.settings.paths import Paths
from neuropredict.settings.schema import load_params

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BAD_SHIFT = 3.0  # in the model's scaled next-return units: about three daily standard deviations


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--start", default="2022-01-01", help="first forecast target of the replay")
    ap.add_argument("--before", type=float, default=0.4, help="share of the replay streamed before the promotion")
    ap.add_argument("--rate", type=float, default=100.0, help="ticks/s of the rest of the replay")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "promotion.json")
    return ap.parse_args()


def cli(root: Path, env: dict, *args: str) -> dict:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "neuropredict.cli", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    return {"command": "neuropredict " + " ".join(args), "exit_code": proc.returncode, "stdout": proc.stdout.rstrip(),
            "stderr": proc.stderr.rstrip(), "seconds": time.monotonic() - started}


def make_project(tmp: Path) -> Path:
    """A scratch copy with this project's raw data and tuned models (so `register` runs alone)."""
    root = scratch.copy_project(REPO, tmp / "project")
    for rel in ("data/raw", "models/tuned"):
        if not (REPO / rel).is_dir():
            sys.exit(f"{REPO / rel} is missing: run `dvc repro` first")
        shutil.copytree(REPO / rel, root / rel, symlinks=False)
    (root / "metrics").mkdir(exist_ok=True)
    return root


def register(root: Path, env: dict, shift: float = 0.0) -> str:
    if shift:
        from neuropredict.forecaster import Forecaster

        best = root / "models" / "tuned" / "best"
        f = Forecaster.load(best)
        dense = f.model.get_layer("next_return")
        kernel, bias = dense.get_weights()
        dense.set_weights([kernel, bias + np.float32(shift)])
        f.save(best)
    subprocess.run([sys.executable, str(root / "pipelines" / "register.py")], cwd=root, env=env, check=True,
                   capture_output=True)
    return json.loads((root / "metrics" / "register.json").read_text())["version"]


def count_predictions(bootstrap: str, topic: str) -> dict[str, int]:
    with kafka_io.TopicReader(bootstrap) as reader:
        versions = [messages.decode(r.value)["model_version"] for r in reader.read_all([topic])]
    return {v: versions.count(v) for v in sorted(set(versions))}


def main() -> int:
    args = parse_args()
    configure_logging()
    with tempfile.TemporaryDirectory(prefix="bench-promotion-") as tmp:
        root = make_project(Path(tmp))
        env = scratch.scratch_env(root)
        os.environ.update({k: v for k, v in env.items() if k.startswith(("MLFLOW_", "NEUROPREDICT_"))})
        params = load_params(root / "params.yaml")
        topics = Topics()
        good, bad = register(root, env), register(root, env, BAD_SHIFT)
        print(f"registered v{good} (production) and v{bad} (output shifted: challenger)", flush=True)
        broker = brokers.start_scratch_broker("tansu", Path(tmp) / "kafka", params.kafka, topics=topics)
        env["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
        state = Path(tmp) / "state"
        serve = [sys.executable, "-m", "neuropredict.cli", "serve"]
        running = [workers.start(f"worker-{i}", serve, state / f"worker-{i}.log", env, root, topics.group)
                   for i in (1, 2)]
        guard_log = state / "guard.log"
        guard = subprocess.Popen([sys.executable, "-m", "neuropredict.cli", "guard"], cwd=root, env=env,
                                 stdout=open(guard_log, "w"), stderr=subprocess.STDOUT)
        try:
            workers.wait_ready(running)
            report = scenario(args, root, env, broker.bootstrap, topics, params, good, bad)
        finally:
            guard.terminate()
            guard.wait(30)
            workers.stop(running)
            broker.stop()
        report["guard_log"] = [line for line in guard_log.read_text().splitlines() if "neuropredict.guard" in line]
        report["measured"] = tracking.measured("python bench/promotion.py", REPO)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"rollback {report['rollback_seconds_after_force']:.1f} s after `promote --force`; v{bad} published "
          f"{report['forecasts_by_bad_version']} forecasts as production\nreport: {args.out}")
    return 0


def scenario(args, root: Path, env: dict, bootstrap: str, topics: Topics, params, good: str, bad: str) -> dict:
    ticks, _ = producer.replay_period(params, Paths(root), params.featurize.window, args.start)
    split = int(len(ticks) * args.before)
    producer.publish(ticks[:split], topics.prices, bootstrap=bootstrap, serving=params.serving)
    expected = split - params.featurize.window * len(params.data.symbols)
    retry.wait_until(lambda: sum(count_predictions(bootstrap, topics.shadow_predictions).values()) >= expected - 20,
                     300, "the shadow forecasts of the first part", every_s=1.0)
    compared = cli(root, env, "compare", "--no-mlflow")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(root / "reports" / "compare" / "compare.png", args.out.with_name("promotion-compare.png"))
    refused = cli(root, env, "promote", bad)
    forced_at = time.monotonic()
    forced = cli(root, env, "promote", bad, "--force")
    sender = threading.Thread(target=producer.publish, kwargs=dict(
        ticks=ticks[split:], topic=topics.prices, bootstrap=bootstrap, rate=args.rate, serving=params.serving))
    sender.start()
    retry.wait_until(lambda: registry.alias_version(params.register.model_name) == good, 300, "the guard's rollback",
                     every_s=0.2)
    command_to_rollback_s = time.monotonic() - forced_at
    moves = promotions.history(params.register.model_name, PRODUCTION_ALIAS)
    forced_move, guard_move = moves[-2], moves[-1]  # the alias moves as recorded: the force, then the guard's
    sender.join()
    retry.wait_until(lambda: sum(count_predictions(bootstrap, topics.predictions).values())
                     >= len(ticks) - params.featurize.window * len(params.data.symbols), 300, "the whole replay")
    published = count_predictions(bootstrap, topics.predictions)
    return {"good_version": good, "bad_version": bad, "ticks": len(ticks), "replay_start": args.start,
            "promoted_after_ticks": split, "rate_after_promotion": args.rate,
            "rollback_seconds_after_force": (guard_move.at_ms - forced_move.at_ms) / 1000,
            "rollback_seconds_after_force_command_started": command_to_rollback_s,
            "moves": [(m.kind, m.from_version, m.to_version) for m in (forced_move, guard_move)],
            "forecasts_by_bad_version": published.get(bad, 0),
            "forecasts_by_version": published, "guard": params.guard.model_dump(),
            "alias_poll_interval_s": params.serving.alias_poll_interval_s,
            "commands": {"compare": compared, "promote_refused": refused, "promote_forced": forced,
                         "history": cli(root, env, "history")}}


if __name__ == "__main__":
    sys.exit(main())
