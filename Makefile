# KafkaNeuroPredict. `make demo` runs the main job, `make test` runs the tests; both set up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export TF_CPP_MIN_LOG_LEVEL := 3
export TF_ENABLE_ONEDNN_OPTS := 0

.PHONY: help setup kafka demo cluster test test-fast bench docs notebooks ui clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create/refresh .venv with the pinned dependencies (quick when nothing changed)

# uv installs the same pinned set as pip, about four times faster (parallel downloads, bytecode
# compiled on both cores: 56 s against pip's 3-4 min from empty caches); pip when uv cannot install.
UV := uv==0.13.9
LOCKED := -c requirements.lock -e ".[dev]"

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 11), "Python 3.11+ is required"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing pinned dependencies into $(VENV) (first time: about a minute)..."
	@if $(BIN)/python -m pip install -qq --disable-pip-version-check "$(UV)" 2>/dev/null; then \
		$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python $(LOCKED); \
	else \
		$(BIN)/python -m pip install -qq --disable-pip-version-check $(LOCKED) 2>&1 | grep -v "^WARNING: Location" || true; \
	fi
	@$(BIN)/python -c "import neuropredict, tensorflow, mlflow, great_expectations, kafka" \
		|| (echo "install failed: see the output above" >&2; exit 1)
	@touch $(STAMP)

kafka: setup  ## fetch Apache Kafka's broker and tools (pinned in serving/apache-kafka/pom.xml; not with KAFKA_HOME set)
	$(BIN)/python -m neuropredict.apache_kafka

demo: setup  ## the main job end to end (KEEP=1 leaves services running; INTERVAL=1m: the intraday model; VARIANT=regime-2020: trained through 2019, tested on 2020; BROKER=apache)
	$(BIN)/neuropredict demo $(if $(KEEP),--keep) $(if $(INTERVAL),--interval $(INTERVAL)) $(if $(VARIANT),--variant $(VARIANT)) $(if $(BROKER),--broker $(BROKER))

cluster: setup  ## serving/compose.yaml as processes: Apache Kafka, PostgreSQL, MLflow server, WORKERS workers (3); the test year through it
	$(BIN)/neuropredict demo --workers $(or $(WORKERS),3) $(if $(KEEP),--keep)

# Three test processes (TEST_PROCESSES=0: one, in-process): most tests wait on brokers, servers and subprocesses,
# so three overlap on two cores; each test file stays in one process (its module-scoped servers are its own).
# --no-loadscope-reorder: xdist would hand out the files by their number of tests; this keeps the
# order tests/tooling/timing.py gives them (the longest first, by the last timing report).
TEST_PROCESSES ?= 3
PYTEST := $(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadfile --no-loadscope-reorder

test: setup  ## the test suite (real brokers: Tansu and Apache Kafka; MLflow, DVC, great-expectations, TensorFlow)
	@if command -v java >/dev/null && command -v mvn >/dev/null; then $(BIN)/python -m neuropredict.apache_kafka; fi
	$(PYTEST)

test-fast: setup  ## the tests that take seconds, not minutes
	$(PYTEST) -m "not slow"

bench: setup  ## the benchmarks in bench/ (reports in bench/results/)
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/promotion.py

docs: setup  ## render README.md and docs/ from docs/templates/ and the committed reports
	$(BIN)/python docs/build.py

notebooks: setup  ## re-execute the notebooks against this project's store (after make demo)
	$(BIN)/python notebooks/execute.py

ui: setup  ## the MLflow UI on http://127.0.0.1:5000
	$(BIN)/neuropredict ui

clean:  ## remove pipeline outputs and the local MLflow store (keeps .venv)
	rm -rf data/raw data/features models reports/validation mlruns/mlflow.db mlruns/artifacts .neuropredict
