"""The worker image's Python install, before and after it carried only what serving needs.

serving/Dockerfile used to install the package with all its dependencies (the training stack too:
DVC, great-expectations, keras-tuner, tensorboard, yfinance, matplotlib, the MLflow server and its
SQL stores). It now installs serving/requirements.txt with the lock's pins, then the package
without dependencies. Without a Docker engine here, each install is built the way the Dockerfile
does it, into a fresh virtual environment (uv from its cache when it is there, else pip), and the
two are measured side by side: the size of site-packages (the image's install layer; the
python:3.11-slim base under it is the same for both) and the distributions in it.

Then the slim environment runs a worker for real: `neuropredict serve` on a private embedded
broker, loading the project's production model from an MLflow server (HTTP, as in compose), on a
replay of real ticks. Training-only packages must be absent from it.

    python bench/worker_image.py            # the project's production model: run `dvc repro` first
    python bench/worker_image.py --smoke --out X   # the test suite (tests/e2e/test_worker_image.py)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from neuropredict import brokers, procs, producer, registry, tracking, tracking_server
from neuropredict.settings import environment
from neuropredict.settings.contracts import Topics
from neuropredict.settings.paths import paths, project_root
from neuropredict.settings.schema import load_params

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TRAINING_ONLY = ("dvc", "great_expectations", "keras_tuner", "tensorboard", "yfinance", "matplotlib", "psycopg",
                 "sqlalchemy", "flask")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ticks", type=int, default=2000, help="ticks the slim worker scores")
    ap.add_argument("--smoke", action="store_true", help="fewer ticks: checks that it runs")
    ap.add_argument("--out", type=Path, help="report path (default bench/results/worker_image.json)")
    args = ap.parse_args()
    if args.smoke:
        args.ticks = 300
    args.out = args.out or HERE / "results" / "worker_image.json"
    return args


def installer() -> list[str]:
    """uv (this venv's, as `make setup` installs it; or on PATH), else pip."""
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    return [found, "pip", "install", "-q", "--python"] if found else []


def build(folder: Path, slim: bool) -> dict:
    """A fresh venv with the image's install: before (the package and all its dependencies) or after.
    The package is built from a copy of what the Dockerfile copies (a build writes into its source)."""
    source = folder.with_name(folder.name + "-source")
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = str(folder / "bin" / "python")
    tool = installer()
    install = [*tool, python] if tool else [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    lock = ["-c", str(REPO / "requirements.lock")]
    began = time.perf_counter()
    if slim:
        subprocess.run([*install, *lock, "-r", str(REPO / "serving" / "requirements.txt")], check=True)
        subprocess.run([*install, "--no-deps", str(source)], check=True)
    else:
        subprocess.run([*install, *lock, str(source)], check=True)
    site = next((folder / "lib").glob("python3*/site-packages"))
    dists = subprocess.run([python, "-c", "import importlib.metadata as m; print(len({d.metadata['Name'].lower() "
                            "for d in m.distributions()}))"], capture_output=True, text=True, check=True)
    absent = subprocess.run([python, "-c", "import importlib.util as u, sys; "
                             f"print(','.join(m for m in {TRAINING_ONLY!r} if u.find_spec(m)))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    return {"site_packages_mb": _megabytes(site), "distributions": int(dists.stdout), "install_s": time.perf_counter()
            - began, "training_packages_present": [m for m in absent.split(",") if m], "python": python}


def _megabytes(folder: Path) -> float:
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    return round(total / 2**20, 1)


def serve_with(python: str, ticks: int, tmp: Path) -> dict:
    """The slim environment's worker on a private broker, its model from an MLflow server over HTTP."""
    params = load_params()
    topics = Topics("bench-image.")
    broker = brokers.start_scratch_broker("tansu", tmp / "broker", params.kafka, topics=topics)
    port = procs.free_port()
    server = tracking_server.start_mlflow_ui(port, tmp / "mlflow.log")
    try:
        name = params.register.model_name
        window = registry.model_window(name, registry.alias_version(name))
        replay, _origin = producer.replay_period(params, paths(), window)
        sent = producer.publish(replay[:ticks], topics.prices, bootstrap=broker.bootstrap, serving=params.serving)
        stats_file = tmp / "stats.json"
        env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "NEUROPREDICT_"))}
        env.update(MLFLOW_TRACKING_URI=server.url, KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
                   NEUROPREDICT_ROOT=str(project_root()), NEUROPREDICT_TOPIC_PREFIX=topics.prefix)
        began = time.perf_counter()
        run = subprocess.run([python, "-m", "neuropredict.cli", "serve", "--max-messages", str(sent["ticks"]),
                              "--timeout-s", "300", "--stats-out", str(stats_file)], env=env, capture_output=True,
                             text=True, timeout=600)
        if run.returncode != 0:
            raise SystemExit(f"the slim worker failed:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}")
        stats = json.loads(stats_file.read_text())
        return {"sent": sent["ticks"], "consumed": stats["consumed"], "predicted": stats["predicted"],
                "seconds": round(time.perf_counter() - began, 1)}
    finally:
        procs.stop([server.pid])
        broker.stop()


def main() -> int:
    args = parse_args()
    if environment.tracking_uri().startswith("http"):
        print("bench/worker_image.py serves the project's own store: unset MLFLOW_TRACKING_URI", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-image-") as folder:
        tmp = Path(folder)
        print("building the worker's install before (everything) and after (serving only) ...", flush=True)
        before, after = build(tmp / "before", slim=False), build(tmp / "after", slim=True)
        print(f"  before {before['site_packages_mb']:,.0f} MB, {before['distributions']} distributions; "
              f"after {after['site_packages_mb']:,.0f} MB, {after['distributions']}", flush=True)
        print("the slim install's worker on a replay ...", flush=True)
        served = serve_with(after.pop("python"), args.ticks, tmp)
        before.pop("python")
    report = {"before": before, "after": after, "served": served,
              "after_of_before_size": after["site_packages_mb"] / before["site_packages_mb"],
              "installer": "uv" if installer() else "pip", "smoke": args.smoke,
              "measured": tracking.measured(" ".join(["python", *sys.argv]))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"  slim worker: {served['consumed']} consumed, {served['predicted']} predicted in {served['seconds']} s")
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
