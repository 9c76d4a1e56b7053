"""Stage register: the tuned model becomes a registry version; `production` moves only if it earns it."""

from neuropredict import registry, tracking
from neuropredict.console import run_main
from neuropredict.settings.paths import paths
from neuropredict.settings.schema import load_params


def main() -> None:
    params, project = load_params(), paths()
    with tracking.stage_run("register", params.register):
        decision = registry.register_tuned(params, project)
        print(f"register: version {decision['version']} -> {decision['verdict']}: {decision['reason']}")


if __name__ == "__main__":
    run_main(main)
