"""Every file location the product uses, relative to one project root (the folder of params.yaml)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def project_root() -> Path:
    """The folder holding params.yaml: $NEUROPREDICT_ROOT, else the nearest one above the cwd."""
    env = os.environ.get("NEUROPREDICT_ROOT")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    return here


@dataclass(frozen=True)
class Paths:
    """Every file location the product uses, relative to one project root."""

    root: Path

    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    def variant_params_file(self, variant: str) -> Path:
        """The keys of a variant (`intraday`: the 1-minute model; `regime-2020`: trained through
        2019, tested on 2020) that differ from params.yaml."""
        return self.root / f"params-{variant}.yaml"

    def variant_dir(self, variant: str) -> Path:
        """A variant's demo workspace: a project copy with its own outputs and MLflow store."""
        return self.state_dir / variant

    def variants(self) -> list[str]:
        """The variants this project defines (its params-<variant>.yaml files)."""
        return sorted(f.stem.removeprefix("params-") for f in self.root.glob("params-*.yaml"))

    @property
    def snapshot_dir(self) -> Path:
        return self.root / "data" / "snapshot"

    @property
    def raw_dir(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def stream_dir(self) -> Path:
        """Ticks the stream carried (`neuropredict retrain` writes them): a dependency of download."""
        return self.root / "data" / "stream"

    @property
    def features_dir(self) -> Path:
        return self.root / "data" / "features"

    @property
    def model_dir(self) -> Path:
        return self.root / "models" / "tuned"

    @property
    def best_model_dir(self) -> Path:
        """The tuned model the register stage ships (a copy of the winning cell's folder)."""
        return self.model_dir / "best"

    @property
    def selection_file(self) -> Path:
        return self.best_model_dir / "selection.json"

    @property
    def tuner_dir(self) -> Path:
        return self.root / "models" / "tuner"

    @property
    def validation_dir(self) -> Path:
        return self.root / "reports" / "validation"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    @property
    def mlruns_dir(self) -> Path:
        return self.root / "mlruns"

    @property
    def state_dir(self) -> Path:
        """PIDs and logs of the embedded services that `neuropredict up` started."""
        return self.root / ".neuropredict"

    @property
    def services_file(self) -> Path:
        """What `neuropredict up` started: name, PID, address and log of each process."""
        return self.state_dir / "services.json"

    def apache_kafka_dir(self, nodes: int) -> Path:
        """A local Apache Kafka cluster's config and data (topics, committed offsets): kept by `down`."""
        return self.state_dir / f"apache-kafka-{nodes}"

    @property
    def tracking_server_dir(self) -> Path:
        """The team tracking server's PostgreSQL cluster, artifacts and secrets (0600): kept by `down`."""
        return self.state_dir / "tracking-server"


def paths(root: Path | None = None) -> Paths:
    return Paths(root or project_root())
