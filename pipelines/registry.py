"""Stage registry: which model registry `register` writes to. It runs on every `dvc repro`
(always_changed) and only asks the registry; `register` depends on its answer, so a pipeline
pointed at another tracking server, or a wiped one, registers there without retraining. It logs
no MLflow run: it would add one to every no-op `dvc repro`."""

from neuropredict import registry, tracking
from neuropredict.console import run_main
from neuropredict.files import write_json
from neuropredict.settings import environment
from neuropredict.settings.paths import paths
from neuropredict.settings.schema import load_params


def main() -> None:
    params, project = load_params(), paths()
    uri = tracking.connect(project.root)
    found = registry.identity(params.register.model_name)
    write_json(project.reports_dir / "registry.json", found)
    print(f"registry: {found['model']} at {environment.redacted(uri)}")


if __name__ == "__main__":
    run_main(main)
