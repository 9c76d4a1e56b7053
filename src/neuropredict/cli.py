"""The `neuropredict` command: one verb per job; errors are one line naming the problem and the fix."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from datetime import datetime

from neuropredict import config
from neuropredict.console import run_main
from neuropredict.errors import NeuropredictError


def _models(args: argparse.Namespace) -> int:
    from neuropredict import registry

    name = config.load_params().register.model_name
    rows = registry.list_versions(name)
    if not rows:
        print(f"no versions of '{name}' in {config.tracking_uri()}: run `dvc repro` to train and register one")
        return 0
    head = f"{'version':>7}  {'aliases':<22}{'cell':<6}{'window':>7}{'test MSE':>11}{'persist.':>11}{'mean skill':>11}{'DM t max':>9}  created"
    print(f"{name}  ({config.tracking_uri()})")
    print(head)
    print("-" * len(head))
    for r in rows:
        t = r["tags"]
        created = datetime.fromtimestamp(r["created"] / 1000).strftime("%Y-%m-%d %H:%M")
        skill = t.get("test_mean_skill")
        skill_txt = f"{100 * float(skill):+.2f} %" if skill else "-"
        print(f"{r['version']:>7}  {','.join(r['aliases']) or '-':<22}{t.get('cell', '-'):<6}{t.get('window', '-'):>7}"
              f"{_num(t.get('test_mse')):>11}{_num(t.get('test_persistence_mse')):>11}{skill_txt:>11}"
              f"{_num(t.get('test_max_dm_t'), '+.2f'):>9}  {created}")
    return 0


def _num(text: str | None, fmt: str = ".4f") -> str:
    return format(float(text), fmt) if text else "-"


def _promote(args: argparse.Namespace) -> int:
    from neuropredict import registry

    name = config.load_params().register.model_name
    previous = registry.promote(name, args.version)
    print(f"{name}: production -> version {args.version} (was {previous or 'unset'}); "
          f"running workers switch at their next alias check")
    return 0


def _ui(args: argparse.Namespace) -> int:
    uri = config.tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(args.port), "--workers", "1"]
    print(f"MLflow UI on http://127.0.0.1:{args.port} (store {uri}); Ctrl-C stops it")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return subprocess.call(cmd, env=env)


def _repro(args: argparse.Namespace) -> int:
    dvc = shutil.which("dvc") or os.path.join(os.path.dirname(sys.executable), "dvc")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.call([dvc, "repro", *args.targets], cwd=config.project_root(), env=env)


def _demo(args: argparse.Namespace) -> int:
    from neuropredict import demo

    return demo.run(keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuropredict", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("models", help="registered versions, aliases and key test metrics")
    p.set_defaults(fn=_models)

    p = sub.add_parser("promote", help="move the `production` alias to VERSION (workers hot-swap)")
    p.add_argument("version")
    p.set_defaults(fn=_promote)

    p = sub.add_parser("ui", help="the MLflow UI on 127.0.0.1 for this project's store")
    p.add_argument("--port", type=int, default=config.DEFAULT_MLFLOW_UI_PORT)
    p.set_defaults(fn=_ui)

    p = sub.add_parser("repro", help="`dvc repro` with this environment's Python (same as dvc repro)")
    p.add_argument("targets", nargs="*")
    p.set_defaults(fn=_repro)

    p = sub.add_parser("demo", help="the main job end to end on the embedded defaults")
    p.add_argument("--keep", action="store_true", help="leave the services it started running")
    p.set_defaults(fn=_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def call() -> int:
        try:
            return args.fn(args)
        except NeuropredictError:
            raise
        except OSError as exc:
            raise NeuropredictError(f"{exc}") from None

    run_main(call)


if __name__ == "__main__":  # pragma: no cover
    main()
