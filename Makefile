# Build, lint, test and run pqlflow. Every target sets up what it needs from nothing.
PYTHON ?= python3
VENV ?= .venv
SAM_VENV ?= .venv-sam
PY := $(VENV)/bin/python
export AWS_DEFAULT_REGION ?= us-east-1
export PIP_DISABLE_PIP_VERSION_CHECK = 1
export SAM_CLI_TELEMETRY = 0

.PHONY: setup test unit lint lint-template demo bench bench-warehouse schemas clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

# aws-sam-cli pins boto3, so it lives in a venv of its own.
$(SAM_VENV)/.installed:
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install -q --upgrade pip
	$(SAM_VENV)/bin/pip install -q 'aws-sam-cli>=1.120'
	touch $@

setup: $(VENV)/.installed

## demo: replay the bundled demo history through the whole system locally (the main job)
demo: setup
	$(VENV)/bin/pqlflow replay events/demo/history.jsonl --out out --simulate-recipients

## test: template lint (cfn-lint + serverless rules, sam validate --lint), ruff, import-linter, mypy, then pytest
test: setup $(SAM_VENV)/.installed lint-template lint
	$(VENV)/bin/pytest -q

unit: setup
	$(VENV)/bin/pytest -q tests/unit

lint-template: setup $(SAM_VENV)/.installed
	$(VENV)/bin/cfn-lint -t template.yaml -a cfn_lint_serverless.rules
	$(SAM_VENV)/bin/sam validate --lint --template template.yaml

# ruff; the architecture (import-linter: a stage never imports a later one); types (mypy, the package ships py.typed)
lint: setup
	$(VENV)/bin/ruff check layers functions tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

bench: setup
	$(PY) bench/ingest_bench.py
	$(PY) bench/qualify_bench.py
	$(PY) bench/backtest_bench.py
	$(PY) bench/parquet_bench.py
	$(PY) bench/discover_bench.py
	$(PY) bench/backtest_speed_bench.py
	$(PY) bench/collect_bench.py
	$(PY) bench/cost_bench.py --shape all
	$(PY) bench/cost_bench.py --shape busy --transport firehose

## bench-warehouse: backtest and discover on a 30M-event history, partitioned (generates 5.8 GB the first time, ~20 min)
bench-warehouse: setup
	$(PY) bench/warehouse_bench.py

schemas: setup
	$(VENV)/bin/pqlflow schemas

clean:
	rm -rf $(VENV) $(SAM_VENV) out .pytest_cache
