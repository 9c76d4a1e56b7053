"""The `neuropredict` command: one verb per job; errors are one line naming the problem and the fix."""

from __future__ import annotations

import argparse
import os
import subprocess
from datetime import datetime
from pathlib import Path

from neuropredict.console import configure_logging, run_main, tool, tools_env
from neuropredict.errors import NeuropredictError
from neuropredict.files import write_json
from neuropredict.settings import contracts, environment
from neuropredict.settings.contracts import Topics
from neuropredict.settings.paths import paths, project_root
from neuropredict.settings.schema import load_params


def _models(args: argparse.Namespace) -> int:
    from neuropredict import registry

    name = load_params().register.model_name
    rows = registry.list_versions(name)
    if not rows:
        print(f"no versions of '{name}' in {environment.tracking_uri()}: run `dvc repro` to train and register one")
        return 0
    head = (f"{'version':>7}  {'aliases':<22}{'cell':<6}{'window':>7}{'test MSE':>11}{'persist.':>11}{'mean skill':>11}"
            f"{'DM t max':>9}{'coverage %':>17}  created")
    print(f"{name}  ({environment.tracking_uri()})")
    print(head)
    print("-" * len(head))
    for r in rows:
        t = r["tags"]
        created = datetime.fromtimestamp(r["created"] / 1000).strftime("%Y-%m-%d %H:%M")
        skill = t.get("test_mean_skill")
        skill_txt = f"{100 * float(skill):+.2f} %" if skill else "-"
        print(f"{r['version']:>7}  {','.join(r['aliases']) or '-':<22}{t.get('cell', '-'):<6}{t.get('window', '-'):>7}"
              f"{_num(t.get('test_mse')):>11}{_num(t.get('test_persistence_mse')):>11}{skill_txt:>11}"
              f"{_num(t.get('test_max_dm_t'), '+.2f'):>9}{_coverage(t):>17}  {created}")
    return 0


def _coverage(tags: dict[str, str]) -> str:
    """'80: 81.0 95: 94.7' from a version's tags; '-' for a version without intervals."""
    levels = [p for p in tags.get("interval_levels", "").split(",") if p]
    return " ".join(f"{p}:{float(tags[f'test_coverage_{p}']):.1f}" for p in levels
                    if f"test_coverage_{p}" in tags) or "-"


def _date(text: str) -> str:
    """argparse type: a date like 2024-01-31, checked here rather than deep inside pandas."""
    try:
        datetime.strptime(text[:10], "%Y-%m-%d")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2024-01-31") from None
    return text


def _bounded(kind: type, least: float, what: str):
    """argparse type: a number of `kind` >= least, checked before anything is contacted."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value < least or value != value:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


_count = _bounded(int, 1, "a whole number of at least 1")
_amount = _bounded(int, 0, "a whole number of at least 0")
_rate = _bounded(float, 0.0, "a number of at least 0")
_seconds = _bounded(float, 1e-3, "a positive number of seconds")


def _num(text: str | None, fmt: str = ".4f") -> str:
    return format(float(text), fmt) if text else "-"


def _promote(args: argparse.Namespace) -> int:
    from neuropredict import promote

    params = load_params()
    name = params.register.model_name
    if args.rollback:
        if args.version:
            raise NeuropredictError("--rollback returns to the previous production: give no VERSION with it")
        move = promote.rollback(params)
    elif not args.version:
        raise NeuropredictError("which version? `neuropredict promote VERSION` (see `neuropredict models`), "
                                "or `neuropredict promote --rollback`")
    else:
        move = promote.promote(params, paths(), _topics(params), args.version, force=args.force)
    if move is not None:
        print(f"{name}: production -> version {move.to_version} (was {move.from_version or 'unset'}; {move.kind}); "
              f"running workers switch at their next alias check")
    return 0


def _history(args: argparse.Namespace) -> int:
    from neuropredict import promotions

    name = load_params().register.model_name
    print(f"{name}: alias moves ({environment.tracking_uri()}, experiment {contracts.PROMOTIONS_EXPERIMENT_NAME})")
    print(promotions.format_history(promotions.history(name, args.alias)))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from neuropredict import compare, registry

    params = load_params()
    name = params.register.model_name
    versions = args.versions or [registry.alias_version(name, contracts.PRODUCTION_ALIAS),
                                 registry.alias_version(name, contracts.CHALLENGER_ALIAS)]
    if len(versions) != 2 or None in versions:
        raise NeuropredictError("compare takes two versions (default: production and challenger, which need both "
                                "aliases set): `neuropredict compare 3 5`")
    if versions[0] == versions[1]:
        raise NeuropredictError(f"production and challenger are both version {versions[0]}: nothing to compare; "
                                f"register a new version (`dvc repro`) or name two: `neuropredict compare A B`")
    rows = compare.live_rows(params, _topics(params), since_ms=compare.since_ms(args.since))
    result, paired = compare.compare(rows, *map(str, versions))
    out_dir = paths().reports_dir / "compare"
    chart = compare.report(result, paired, out_dir, log_to_mlflow=not args.no_mlflow)
    print(compare.format_comparison(result))
    print(f"report: {out_dir / 'compare.json'}  chart: {chart}")
    return 0


def _guard(args: argparse.Namespace) -> int:
    import threading

    from neuropredict import guard, tracking
    from neuropredict.stream.worker import stop_on_signals

    tracking.bound_client_retries()
    params = load_params()
    watcher = guard.RollbackGuard(params, _topics(params))
    if args.once:
        move = watcher.check()
        print(f"rolled back: {move.from_version} -> {move.to_version}" if move else "no breach: production stays")
        return 0
    stop = threading.Event()
    stop_on_signals(stop)
    watcher.run(stop)
    return 0


def _ui(args: argparse.Namespace) -> int:
    from neuropredict import tracking, tracking_server

    port = args.port or environment.mlflow_ui_port()
    tracking.setup()  # creates the store if it does not exist yet
    cmd, env = tracking_server.mlflow_ui_command(port)
    print(f"MLflow UI on http://127.0.0.1:{port} (store {environment.tracking_uri()}); Ctrl-C stops it")
    return subprocess.call(cmd, env=env)


def _repro(args: argparse.Namespace) -> int:
    return subprocess.call([tool("dvc"), "repro", *args.targets], cwd=project_root(), env=tools_env())


def _retrain(args: argparse.Namespace) -> int:
    from neuropredict import kafka_io, training

    params = load_params()
    bootstrap = environment.kafka_bootstrap()
    if not kafka_io.answers(bootstrap):
        raise NeuropredictError(f"no Kafka answers at {bootstrap}, so the stream's ticks cannot be read: start it "
                                f"(`neuropredict up`) or set KAFKA_BOOTSTRAP_SERVERS; `dvc repro` retrains without them")
    training.retrain(params, paths(), _topics(params), bootstrap, collect_only=args.collect_only)
    return 0


def _up(args: argparse.Namespace) -> int:
    from neuropredict import services

    if args.workers and args.tracking != "server":
        raise NeuropredictError("--workers starts compose's workers, which log to the tracking server: "
                                "add --tracking server")
    broker = "apache" if args.brokers > 1 else args.broker  # only Apache Kafka runs as a cluster here
    params = load_params()
    result = services.up(params.kafka, _topics(params), ui=not args.no_ui, broker=broker, nodes=args.brokers,
                         tracking=args.tracking, auth=not args.no_auth, workers=args.workers, guard=args.guard,
                         monitoring_on=args.monitoring)
    for name, svc in result["services"].items():
        print(f"{name:<13} {svc.url:<28} pid {svc.pid}  (log {svc.log})")
    print("topics        " + ", ".join(f"{t} ({n} partitions)" for t, n in result["topics"].items()))
    print(f"Kafka bootstrap: {result['bootstrap']}   stop with: neuropredict down")
    if args.tracking == "server":
        print('MLflow server on PostgreSQL: to use it from this shell (dvc repro, serve, the MLflow client), '
              'run  eval "$(neuropredict env)"')
    return 0


def _env(args: argparse.Namespace) -> int:
    """Shell lines exporting what clients need for the tracking server `up` started (no secret in them)."""
    import shlex

    from neuropredict import services, tracking_server

    server = services.load_state().get("mlflow-server")
    if server is None or not server.alive():
        raise NeuropredictError("no tracking server is running here: `neuropredict up --tracking server` first")
    print(f"export MLFLOW_TRACKING_URI={server.url}")
    auth = tracking_server.credentials()
    if auth:
        user, password_file = auth
        print(f"export MLFLOW_TRACKING_USERNAME={user}")
        print(f'export MLFLOW_TRACKING_PASSWORD="$(cat {shlex.quote(str(password_file))})"')
    return 0


def _down(args: argparse.Namespace) -> int:
    from neuropredict import services

    stopped = services.down()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def _status(args: argparse.Namespace) -> int:
    from neuropredict import registry, services

    params = load_params()
    st = services.status(_topics(params))
    kind = "external cluster" if st["external_kafka"] else "local"
    print(f"Kafka      {st['bootstrap']} ({kind}): {'reachable' if st['kafka_reachable'] else 'NOT reachable'}")
    for name, svc in st["services"].items():
        print(f"{name:<13} {svc['url']:<28} pid {svc['pid']}  {'running' if svc['alive'] else 'DEAD'}")
    if "brokers" in st:
        fenced = f"; fenced (down): {', '.join(map(str, st['fenced']))}" if st.get("fenced") else ""
        print(f"brokers    {', '.join(map(str, st['brokers']))} (controller {st['controller']}{fenced})")
    for topic, n in st.get("topics", {}).items():
        committed = st.get("group_committed", {}).get(topic)
        extra = (f", group {st['group']} committed {committed}, lag {st['group_lag'].get(topic, '?')}"
                 if committed is not None else "")
        print(f"topic      {topic} ({n} partitions{extra})")
        for row in st["partitions"][topic]:
            print(f"             [{row['partition']}] leader {row['leader']}  replicas {row['replicas']}  "
                  f"in sync {row['isr']}")
    if "kafka_error" in st:
        print(f"Kafka error: {st['kafka_error']}")
    name = params.register.model_name
    version = registry.alias_version(name, contracts.PRODUCTION_ALIAS)
    print(f"MLflow     {st['tracking_uri']}: {name}@production = {version or 'none (run dvc repro)'}")
    server = st["services"].get("mlflow-server")
    if server and server["url"] != st["tracking_uri"]:
        print(f'           (the tracking server at {server["url"]} is not this shell\'s store: eval "$(neuropredict env)")')
    return 0


def _produce(args: argparse.Namespace) -> int:
    import threading

    from neuropredict import producer

    params = load_params()
    stop = threading.Event()
    symbols = args.symbols.split(",") if args.symbols else list(params.data.symbols)
    if args.source == "live":
        ticks = producer.live_ticks(symbols, args.poll_s, params.data.download_timeout_s, stop)
    else:
        lead = args.lead if args.lead is not None else _model_window(params)
        ticks, origin = producer.replay_period(params, paths(), lead, args.start, args.end, symbols, args.interval)
        if args.limit:
            ticks = ticks[: args.limit]
        print(f"replaying {len(ticks)} real ticks of {', '.join(symbols)} from {origin} ({lead} "
              f"lead-in ticks per symbol) at {'full speed' if not args.rate else f'{args.rate:g} ticks/s'}")
    topic = _topics(params).prices
    try:
        result = producer.publish(ticks, topic, rate=args.rate, serving=params.serving, malformed=args.malformed,
                                  stop=stop)
    except KeyboardInterrupt:
        stop.set()
        return 130
    print(f"sent {result['ticks']} ticks + {result['malformed']} malformed to {topic} "
          f"in {result['seconds']:.2f} s ({result['ticks_per_s']:.0f} msgs/s)")
    return 0


def _topics(params) -> Topics:
    return environment.topics(params.kafka.topic_prefix)


def _model_window(params) -> int:
    """The production model's window (so its first forecast is for --start), else params'."""
    from neuropredict import registry

    name = params.register.model_name
    version = registry.alias_version(name, contracts.PRODUCTION_ALIAS)
    return registry.model_window(name, version) if version else params.featurize.window


def _serve(args: argparse.Namespace) -> int:
    from neuropredict.stream import worker

    params = load_params()
    stats = worker.serve(params, wait=args.wait, max_messages=args.max_messages, timeout_s=args.timeout_s,
                         idle_timeout_s=args.idle_timeout_s)
    if args.stats_out:

        write_json(args.stats_out, stats.snapshot())
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from neuropredict import stream_report
    from neuropredict.stream.rules import TickRules

    params = load_params()
    rows = stream_report.joined_rows(TickRules.from_params(params.validate, params.serving), params.data.intraday,
                                     _topics(params))
    rows = stream_report.in_period(rows, args.start, args.end)
    out_dir = paths().reports_dir / "evaluate"
    result = stream_report.report(rows, out_dir, log_to_mlflow=not args.no_mlflow)
    print(stream_report.format_report(result))
    print(f"report: {out_dir / 'report.json'}  plot: {out_dir / 'predicted_vs_actual.png'}")
    return 0


def _view(args: argparse.Namespace) -> int:
    import signal
    import threading

    from neuropredict import live_view, procs
    from neuropredict.stream.rules import TickRules

    params = load_params()
    port = args.port or environment.view_port()
    procs.require_free(port, "NEUROPREDICT_VIEW_PORT")
    view = live_view.LiveView(TickRules.from_params(params.validate, params.serving), params.data.intraday,
                              _topics(params), environment.kafka_bootstrap(), args.last)
    server = live_view.serve(view, port)
    print(f"live view on http://127.0.0.1:{port}/ (forecasts of {_topics(params).predictions}; Ctrl-C stops it)",
          flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    return 0


def _check_parity(args: argparse.Namespace) -> int:
    from neuropredict import parity, tracking

    result = parity.check(load_params(), paths(), args.version, broker=args.broker)
    print(parity.format_result(result))
    flags = (f" --version {args.version}" if args.version else "") + (f" --broker {args.broker}" if args.broker != "tansu" else "")
    write_json(paths().reports_dir / "parity.json", {**result, "measured": tracking.measured(f"neuropredict check-parity{flags}")})
    return 0 if result["passed"] else 1


def _demo(args: argparse.Namespace) -> int:
    from neuropredict import demo

    if args.workers:
        if args.interval == "1m" or args.variant or args.broker == "tansu":
            raise NeuropredictError("demo --workers runs compose's topology: the daily model on Apache Kafka; "
                                    "drop --interval 1m / --variant / --broker tansu (or drop --workers)")
        return demo.run_topology(args.workers, keep=args.keep)
    if args.interval == "1m" and args.variant not in (None, "intraday"):
        raise NeuropredictError("--interval 1m is the intraday variant: drop one of --interval / --variant")
    variant = "intraday" if args.interval == "1m" else args.variant
    if variant:
        return demo.run_variant(variant, keep=args.keep, broker=args.broker or "tansu")
    return demo.run(keep=args.keep, broker=args.broker or "tansu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuropredict", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="every library's log lines too (sets NEUROPREDICT_VERBOSE=1, also for dvc stages)")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("models", help="registered versions, aliases and key test metrics")
    p.set_defaults(fn=_models)

    p = sub.add_parser("promote", help="move `production` to VERSION after showing and checking the evidence "
                                       "(offline gate, live shadow scores); workers hot-swap")
    p.add_argument("version", nargs="?")
    p.add_argument("--force", action="store_true", help="promote although the evidence speaks against it (recorded "
                                                        "as forced)")
    p.add_argument("--rollback", action="store_true", help="return production to the version it held before")
    p.set_defaults(fn=_promote)

    p = sub.add_parser("history", help="every recorded move of the aliases: when, from -> to, who, why")
    p.add_argument("--alias", help="only this alias (production, challenger)")
    p.set_defaults(fn=_history)

    p = sub.add_parser("compare", help="two versions on the same live ticks (default: production vs challenger), "
                                       "from the topics")
    p.add_argument("versions", nargs="*", metavar="VERSION", help="A B (default: production challenger)")
    p.add_argument("--since", help="only forecasts since then: 2h, 30m, 3d ago, or a time (UTC) like 2026-12-07T09:30")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the comparison to MLflow")
    p.set_defaults(fn=_compare)

    p = sub.add_parser("guard", help="the rollback guard: move production back when its live forecasts fall "
                                     "behind persistence or its intervals lose calibration (params: guard)")
    p.add_argument("--once", action="store_true", help="judge once and exit")
    p.set_defaults(fn=_guard)

    p = sub.add_parser("ui", help="the MLflow UI on 127.0.0.1 for this project's store")
    p.add_argument("--port", type=int, help="default: $NEUROPREDICT_UI_PORT, else 5000")
    p.set_defaults(fn=_ui)

    p = sub.add_parser("repro", help="`dvc repro` with this environment's Python (same as dvc repro)")
    p.add_argument("targets", nargs="*")
    p.set_defaults(fn=_repro)

    p = sub.add_parser("retrain", help="the ticks the stream carried into data/stream, then `dvc repro`: the splits "
                                       "move to the newest sessions and a gated new version is registered")
    p.add_argument("--collect-only", action="store_true", help="only bring the stream's ticks into data/stream")
    p.set_defaults(fn=_retrain)

    p = sub.add_parser("up", help="start a local Kafka broker and the MLflow UI (or the tracking server, and "
                                  "compose's workers); create the topics")
    p.add_argument("--no-ui", action="store_true", help="do not start the MLflow UI")
    p.add_argument("--broker", choices=["tansu", "apache"], default="tansu",
                   help="tansu: embedded, in memory, no dependencies (default); apache: Apache Kafka (Java 17+), "
                        "data kept in .neuropredict/")
    p.add_argument("--brokers", type=int, choices=[1, 3], default=1,
                   help="Apache Kafka nodes (3 implies --broker apache): every partition then has 3 replicas, "
                        "and a write waits for 2 of them")
    p.add_argument("--tracking", choices=["local", "server"], default="local",
                   help="local: the project's SQLite store and its UI (default); server: PostgreSQL and an MLflow "
                        "server on it, with served artifacts and basic-auth (a team's store)")
    p.add_argument("--no-auth", action="store_true",
                   help="the tracking server without basic-auth (only for a machine of your own)")
    p.add_argument("--workers", type=_amount, default=0,
                   help="with --tracking server: start this many serving workers as serving/compose.yaml "
                        "configures them (its worker environment, the image's entry point)")
    p.add_argument("--guard", action="store_true",
                   help="also start the rollback guard (`neuropredict guard`), for workers you run yourself "
                        "(--workers starts one anyway)")
    p.add_argument("--monitoring", action="store_true",
                   help="also start Prometheus (Debian's `prometheus`) scraping the workers `up` runs, with the "
                        "alert rules of serving/prometheus/alerts.yml")
    p.set_defaults(fn=_up)

    p = sub.add_parser("env", help="shell exports for the tracking server `up` started: eval \"$(neuropredict env)\"")
    p.set_defaults(fn=_env)

    p = sub.add_parser("down", help="stop what `up` started (and nothing else)")
    p.set_defaults(fn=_down)

    p = sub.add_parser("status", help="what runs where: broker, UI, topics, committed offsets, production model")
    p.set_defaults(fn=_status)

    p = sub.add_parser("produce", help="send ticks to the input topic (stock_prices): a replay of real history, "
                                       "or live yfinance")
    p.add_argument("--source", choices=["replay", "live"], default="replay")
    p.add_argument("--symbols", help="comma-separated (default: data.symbols)")
    p.add_argument("--start", type=_date, help="first forecast target (default: the test period's first session)")
    p.add_argument("--end", type=_date, help="last date (default: the data's last session)")
    p.add_argument("--interval", choices=["1d", "1m"], help="daily closes or 1-minute bars (default: data.interval)")
    p.add_argument("--lead", type=_amount, help="ticks per symbol before --start (default: the model's window)")
    p.add_argument("--rate", type=_rate, default=0.0, help="ticks per second (0: as fast as possible)")
    p.add_argument("--limit", type=_count, help="send at most this many ticks")
    p.add_argument("--malformed", type=_amount, default=0, help="mix in this many malformed messages (DLQ demo)")
    p.add_argument("--poll-s", type=_seconds, default=60.0, help="live: seconds between yfinance polls")
    p.set_defaults(fn=_produce)

    p = sub.add_parser("serve", help="the serving worker: score the input topic with models:/NAME@production")
    p.add_argument("--max-messages", type=_count, help="stop after consuming this many messages")
    p.add_argument("--timeout-s", type=_seconds, help="stop after this many seconds")
    p.add_argument("--idle-timeout-s", type=_seconds, help="stop after this many seconds without input")
    p.add_argument("--wait", action="store_true",
                   help="retry until the production model and Kafka are reachable (for services), instead of exiting")
    p.add_argument("--stats-out", type=Path, help="write the final counts and live metrics here (JSON)")
    p.set_defaults(fn=_serve)

    p = sub.add_parser("evaluate", help="join streamed forecasts with later prices: MSE etc. beside persistence")
    p.add_argument("--start", type=_date, help="first target date to score")
    p.add_argument("--end", type=_date, help="last target date to score")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    p.set_defaults(fn=_evaluate)

    p = sub.add_parser("view", help="a live page: prices, forecasts and their intervals per symbol; skill and "
                                    "coverage beside the baselines")
    p.add_argument("--port", type=int, help="its port on 127.0.0.1 (default: NEUROPREDICT_VIEW_PORT, 8050)")
    p.add_argument("--last", type=_amount, default=300, help="the newest forecasts of each partition it reads (300)")
    p.set_defaults(fn=_view)

    p = sub.add_parser("check-parity", help="replay the test period through Kafka: same forecasts as offline?")
    p.add_argument("--version", help="model version (default: production)")
    p.add_argument("--broker", choices=["tansu", "apache"], default="tansu",
                   help="the private broker it starts (apache: Apache Kafka, the worker exactly-once)")
    p.set_defaults(fn=_check_parity)

    p = sub.add_parser("demo", help="the main job end to end on the embedded defaults")
    p.add_argument("--keep", action="store_true", help="leave the services it started running")
    p.add_argument("--interval", choices=["1d", "1m"],
                   help="1m: the intraday model (params-intraday.yaml), in its own workspace (default 1d)")
    p.add_argument("--variant", help="a variant of the project (params-<variant>.yaml's keys over params.yaml) in "
                                     "its own workspace: intraday, regime-2020 (trained through 2019, tested on 2020)")
    p.add_argument("--broker", choices=["tansu", "apache"],
                   help="tansu: the embedded broker (default); apache: a local Apache Kafka (Java 17+; fetched from "
                        "Maven Central on first use)")
    p.add_argument("--workers", type=_count,
                   help="serving/compose.yaml's topology as processes: Apache Kafka, PostgreSQL, the MLflow server "
                        "(basic-auth) and this many workers configured from the compose file (daily model, "
                        "Apache Kafka: not with --interval 1m or --broker tansu)")
    p.set_defaults(fn=_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    def call() -> int:
        args = build_parser().parse_args(argv)  # inside the error boundary: nothing may escape it
        if args.verbose:
            os.environ["NEUROPREDICT_VERBOSE"] = "1"
            configure_logging(verbose=True)
        try:
            return args.fn(args)
        except (NeuropredictError, BrokenPipeError):  # a closed pipe: run_main ends quietly
            raise
        except OSError as exc:
            raise NeuropredictError(f"{exc}") from None
        except Exception as exc:
            from mlflow.exceptions import MlflowException

            if isinstance(exc, MlflowException):
                raise NeuropredictError(f"MLflow ({environment.tracking_uri()}): {exc.message.splitlines()[0][:300]}; "
                                        f"is the store or server reachable? (MLFLOW_TRACKING_URI)") from None
            raise

    run_main(call)


if __name__ == "__main__":  # pragma: no cover
    main()
