"""Serving entry point (containers, systemd, `python serving/worker.py`): same as `neuropredict serve`.

Configuration comes from params.yaml (serving:, register.model_name) and the environment:
KAFKA_BOOTSTRAP_SERVERS, MLFLOW_TRACKING_URI, NEUROPREDICT_ROOT.
"""

from neuropredict.cli import main

if __name__ == "__main__":
    import sys

    main(["serve", *sys.argv[1:]])
