"""Stage download: prices from yfinance (bounded by a deadline) or the bundled real snapshot."""

import mlflow  # after neuropredict: its quiet logging defaults apply  # noqa: E402

from neuropredict import sources, tracking
from neuropredict.console import run_main
from neuropredict.settings.paths import paths
from neuropredict.settings.schema import load_params


def main() -> None:
    params, project = load_params(), paths()
    with tracking.stage_run("download", params.data):
        raw, streamed = sources.with_stream(sources.download(params.data, project.snapshot_dir),
                                            project.stream_dir, params.data)
        manifest = sources.write_raw(raw, project.raw_dir, params.data)
        mlflow.log_metrics({f"stream_rows_{s}": n for s, n in streamed.items()})
        mlflow.set_tag("data_source", raw.source)
        mlflow.log_param("source_reason", raw.reason[:500])
        mlflow.log_metrics({f"rows_{s}": v["rows"] for s, v in manifest["symbols"].items()})
        mlflow.log_dict(manifest, "raw/SOURCE.json")
        origin = "the bundled snapshot" if raw.source == "snapshot" else "Yahoo Finance"
        print(f"download: {len(raw.frames)} symbols from {origin} ({raw.reason})")


if __name__ == "__main__":
    run_main(main)
