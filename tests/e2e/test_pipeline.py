"""`dvc repro` for real: DVC, great-expectations, TensorFlow, keras-tuner and an MLflow store."""

import json

import mlflow
import pytest
import yaml

from tests.conftest import READS_DIR, REPRO_LOG, TINY_PARAMS, copy_project, dvc, load_json, make_project, write_params

pytestmark = pytest.mark.slow

STAGES = ("download", "validate", "featurize", "tune", "registry", "register")
RUN_STAGES = tuple(s for s in STAGES if s != "registry")  # registry only asks (see pipelines/registry.py)


def _runs(root):
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["neuropredict"], output_format="list")


def test_repro_runs_every_stage_and_a_second_repro_does_nothing(trained_project):
    root = trained_project
    for rel in ("data/raw/AAPL.csv", "data/raw/SOURCE.json", "reports/validation/data_docs/index.html",
                "data/features/train.npz", "data/features/scaler.json", "models/tuned/best/model.keras"):
        assert (root / rel).is_file(), rel
    assert load_json(root / "data/raw/SOURCE.json")["source"] == "snapshot"
    second = dvc(root, "repro")
    assert second.stdout.count("Running stage") == 1 and "Running stage 'registry'" in second.stdout
    for stage in RUN_STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in second.stdout
    status = dvc(root, "status").stdout
    assert "always changed" in status and "register" not in status.replace("registry", "")


def test_one_repro_is_one_parent_run_with_a_tagged_nested_run_per_stage(trained_project):
    runs = _runs(trained_project)
    parents = [r for r in runs if r.data.tags.get("neuropredict.stage") == "pipeline"]
    assert len(parents) == 1
    parent_id = parents[0].info.run_id
    children = {r.data.tags["mlflow.runName"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id}
    assert set(RUN_STAGES) <= set(children)
    for stage in RUN_STAGES:
        tags = children[stage].data.tags
        assert tags["neuropredict.stage"] == stage and tags["git_commit"]
    assert children["download"].data.tags["data_source"] == "snapshot"
    assert children["featurize"].data.metrics["test_rows"] > 0


def test_every_trial_is_a_nested_run_and_both_cells_were_tried(trained_project):
    runs = _runs(trained_project)
    tune_id = next(r.info.run_id for r in runs if r.data.tags.get("mlflow.runName") == "tune")
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == tune_id
              and r.data.tags.get("neuropredict.stage") == "tune-trial"]
    assert {t.data.params["cell"] for t in trials} == {"lstm", "gru"}
    for t in trials:
        assert {"units", "layers", "dropout", "learning_rate"} <= set(t.data.params)
        assert "best_val_loss" in t.data.metrics and "val_loss" in t.data.metrics
        history = mlflow.tracking.MlflowClient().get_metric_history(t.info.run_id, "val_loss")
        assert len(history) >= 1


def test_metrics_hold_model_and_baseline_figures(trained_project):
    root = trained_project
    tune = load_json(root / "metrics/tune.json")
    assert tune["winner"] in ("lstm", "gru")
    for cell in ("lstm", "gru"):
        assert tune[cell]["test_mse"] > 0 and tune[cell]["test_persistence_mse"] > 0
    test = load_json(root / "metrics/test.json")["scores"]
    for symbol in ("AAPL", "MSFT", "_pooled"):
        for key in ("mse", "rmse", "mae", "mape", "persistence_mse", "drift_mse", "skill", "dm_t"):
            assert key in test[symbol], (symbol, key)
    shown = dvc(root, "metrics", "show", "--json").stdout
    assert "test_persistence_mse" in shown
    for png in ("lstm_vs_gru.png", "learning_curves.png", "test_predictions.png"):
        assert (root / "plots" / png).stat().st_size > 10_000


def test_changing_one_param_reruns_only_what_depends_on_it(trained_project, tmp_path):
    root = copy_project(trained_project, tmp_path / "p")  # every stage done, as after a first repro
    params = json.loads(json.dumps(TINY_PARAMS))
    params["featurize"]["window"] = 12
    write_params(root, params)
    out = dvc(root, "repro", "featurize").stdout
    assert "Running stage 'featurize'" in out
    assert "Running stage 'download'" not in out and "Running stage 'validate'" not in out
    params["validate"]["max_gap_days"] = 6  # reruns validate; its summary is unchanged, so featurize is not
    write_params(root, params)
    out = dvc(root, "repro", "featurize").stdout
    assert "Running stage 'validate'" in out and "Running stage 'featurize'" not in out


def test_bad_data_stops_the_pipeline_naming_the_failed_expectation(tmp_path):
    params = json.loads(json.dumps(TINY_PARAMS))
    params["validate"]["max_abs_log_return"] = 0.01  # real daily moves exceed 1 %
    root = make_project(tmp_path / "p", params)
    proc = dvc(root, "repro", "featurize", check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "AAPL.csv: Close log return (one step): expect_column_values_to_be_between" in proc.stderr
    assert not (root / "data" / "features").exists()
    assert (root / "reports" / "validation" / "summary.json").is_file()


def _leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else key
        keys += _leaf_keys(value, name) if isinstance(value, dict) else [name]
    return keys


def _reads(root) -> dict[str, dict[str, set[str]]]:
    """What each stage of the real `dvc repro` read: params keys, and modules relative to the project."""
    out = {}
    for stage in STAGES:
        trace = load_json(root / READS_DIR / f"{stage}.json")
        out[stage] = {"params": set(trace["params"]),
                      "modules": {"src/neuropredict/" + m.rsplit("/neuropredict/", 1)[1] for m in trace["modules"]}}
    return out


def test_each_stage_lists_exactly_the_params_and_modules_it_reads(trained_project):
    root = trained_project
    all_keys = _leaf_keys(yaml.safe_load((root / "params.yaml").read_text()))
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    for stage, read in _reads(root).items():
        listed = {k for p in stages[stage]["params"] for k in all_keys if k == p or k.startswith(p + ".")}
        modules = {d for d in stages[stage]["deps"] if d.startswith("src/")}
        assert listed == read["params"], (stage, "params", listed ^ read["params"])
        assert modules == read["modules"], (stage, "modules", modules ^ read["modules"])


def test_a_change_to_one_key_or_module_marks_exactly_the_stages_that_read_it(trained_project, tmp_path):
    """Every key and every module changed at once; DVC's status names, per stage, each changed
    dependency (a params entry is a key or a section above it), so one status shows which stages
    each key and each module would rerun (one status per key took minutes)."""
    from dvc.repo import Repo

    root = copy_project(trained_project, tmp_path / "copy")
    reads = _reads(trained_project)
    with Repo(str(root)) as repo:
        assert {name.rsplit(":", 1)[-1] for name in repo.status()} == {"registry"}  # up to date; registry always asks
    params_file = root / "params.yaml"
    tree = yaml.safe_load(params_file.read_text())
    all_keys = _leaf_keys(tree)
    for key in all_keys:  # every key, read by a stage or not
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node[part]
        node[leaf] = f"changed by the test: {key}"
    params_file.write_text(yaml.safe_dump(tree, sort_keys=False))
    modules = sorted(str(m.relative_to(root)) for m in (root / "src").rglob("*.py"))
    for rel in modules:  # every module, read by a stage or not
        (root / rel).write_text((root / rel).read_text() + "\n# changed by the test\n")

    with Repo(str(root)) as repo:
        status = repo.status()
    changed = {stage: {} for stage in STAGES}
    for name, entries in status.items():
        for entry in entries:
            if isinstance(entry, dict):  # registry's "always changed" is a plain string
                changed[name.rsplit(":", 1)[-1]].update(entry.get("changed deps", {}))
    for key in all_keys:
        marked = {s for s, deps in changed.items()
                  if any(key == p or key.startswith(p + ".") for p in deps.get("params.yaml", {}))}
        assert marked == {s for s, r in reads.items() if key in r["params"]}, key
    for rel in modules:
        marked = {s for s, deps in changed.items() if deps.get(rel) == "modified"}
        assert marked == {s for s, r in reads.items() if rel in r["modules"]}, rel


NOISE = ("Traceback", "E0000", "W0000", "I0000", "absl::InitializeLog", "node_def_util", "oneDNN custom operations",
         "WARNING:tensorflow", "Successfully registered", "possibly delisted", "Cookie/crumb", "Failed to get ticker", "Failed downloads")


def test_repro_prints_one_clear_line_per_fact_and_no_library_noise(trained_project):
    printed = (trained_project / REPRO_LOG).read_text()
    assert not [line for line in printed.splitlines() if any(n in line for n in NOISE)]
    for stage in STAGES:
        assert f"\n{stage}: " in printed  # each stage's one-line result


def test_offline_download_says_once_that_it_fell_back_to_the_snapshot(tmp_path):
    params = json.loads(json.dumps(TINY_PARAMS))
    params["data"].update(source="auto", download_timeout_s=5)  # the real yfinance path, bounded
    root = make_project(tmp_path / "p", params)
    proc = dvc(root, "repro", "download")
    printed = proc.stdout + proc.stderr
    assert not [line for line in printed.splitlines() if any(n in line for n in NOISE)], printed
    source = load_json(root / "data/raw/SOURCE.json")["source"]
    if source == "snapshot":  # no Yahoo here (as in this project's sandbox and CI): one line says so
        assert printed.count("yfinance unavailable") == 1 and "from the bundled snapshot (yfinance unavailable" in printed
