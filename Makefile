# FieldSync: every target sets itself up; a fresh machine needs only Python (pyenv) and make.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The cloud side targets the python3.13 Lambda runtime; the agent is also tested on 3.9.
PYTHON313 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3) $(shell command -v python3.13 2>/dev/null) $(shell command -v python3))
PYTHON39  ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.9*/bin/python3) $(shell command -v python3.9 2>/dev/null))

VENV      := .venv
VENV39    := .venv39
VENV_SAM  := .venv-sam
BIN       := $(VENV)/bin
PIP_QUIET := --quiet --disable-pip-version-check
# GNU Make 4 groups each parallel target's output (--output-sync); 3.81 (macOS) lacks it.
OUTPUT_SYNC := $(if $(filter 3.%,$(MAKE_VERSION)),,--output-sync=target)

.PHONY: help test lint typecheck unit test-py39 demo bench sam-build clean

help:
	@echo "make test       lint, type-check and run the whole test suite (creates .venv)"
	@echo "make demo       start the embedded local cloud and show two devices syncing"
	@echo "make bench      run the benchmarks and write docs/benchmarks.md"
	@echo "make sam-build  build the Lambda functions and layer with aws-sam-cli"

$(BIN)/.installed: requirements/dev.lock pyproject.toml
	@test -x "$(BIN)/python" || $(PYTHON313) -m venv $(VENV)
	$(BIN)/pip install $(PIP_QUIET) -r requirements/dev.lock
	$(BIN)/pip install $(PIP_QUIET) --no-deps -e .
	@touch $@

$(VENV39)/.installed: requirements/py39.lock pyproject.toml
	@test -x "$(VENV39)/bin/python" || $(PYTHON39) -m venv $(VENV39)
	$(VENV39)/bin/pip install $(PIP_QUIET) -r requirements/py39.lock
	$(VENV39)/bin/pip install $(PIP_QUIET) --no-deps -e .
	@touch $@

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy

unit: $(BIN)/.installed
	$(BIN)/pytest -q --durations=15

# The device agent must keep working on the oldest Python a field device runs.
test-py39:
ifneq ($(strip $(PYTHON39)),)
	$(MAKE) $(VENV39)/.installed
	$(VENV39)/bin/pytest -q -m agent -p no:cacheprovider tests/unit/foundation tests/unit/agent
else
	@echo "Python 3.9 not found: skipping the agent tests on 3.9"
endif

# The three virtual environments are installed side by side first (downloads and unpacking,
# no test runs meanwhile), then lint, types and the SAM build, then the two test passes side
# by side: each leaves most of a second core idle (subprocesses, sockets, fsyncs), so together
# they take little longer than the 3.13 pass alone. Each pass's output is shown whole when it
# ends (--output-sync).
test:
	$(MAKE) -j3 $(BIN)/.installed $(VENV_SAM)/.installed $(if $(strip $(PYTHON39)),$(VENV39)/.installed)
	$(MAKE) lint typecheck sam-build
	@echo "Running the Python 3.13 and 3.9 test passes side by side; each one's output follows when it ends."
	$(MAKE) -j2 $(OUTPUT_SYNC) unit test-py39

demo: $(BIN)/.installed
	$(BIN)/python -m local.demo

bench: $(BIN)/.installed
	$(BIN)/pip install $(PIP_QUIET) -r requirements/bench.lock
	$(BIN)/python -m bench.run_all

$(VENV_SAM)/.installed: requirements/sam.lock
	@test -x "$(VENV_SAM)/bin/python" || $(PYTHON313) -m venv $(VENV_SAM)
	$(VENV_SAM)/bin/pip install $(PIP_QUIET) -r requirements/sam.lock
	@touch $@

sam-build: $(VENV_SAM)/.installed
	PATH="$(dir $(PYTHON313)):$$PATH" SAM_CLI_TELEMETRY=0 $(VENV_SAM)/bin/sam build --cached --parallel

clean:
	rm -rf $(VENV) $(VENV39) $(VENV_SAM) .aws-sam .mypy_cache .pytest_cache .ruff_cache
