# The two commands a newcomer needs:  make run  (start Parseq)  and  make test  (run every test).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint format check bench bench-envs clean lock

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==0.13.9

$(VENV)/.installed-run: requirements.txt pyproject.toml | $(BIN)/uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements.txt -e .
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt pyproject.toml | $(BIN)/uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements-dev.txt -e .
	touch $@ $(VENV)/.installed-run

## Install and start the embedded default: SQLite, local storage, in-process broker and worker.
run: $(VENV)/.installed-run
	$(BIN)/parseq up

## Install everything, start the services the tests use (and headless Chromium for the
## browser test), lint, check the import rules (lint-imports), and run the whole test suite.
test: $(VENV)/.installed-dev
	./scripts/services.sh
	./scripts/browser.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/bandit -q -r parseq
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/bandit -q -r parseq
	$(BIN)/lint-imports --no-cache

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache

## Re-pin requirements.txt / requirements-dev.txt from the .in files (after editing those).
lock: | $(BIN)/uv
	$(BIN)/uv pip compile requirements.in --no-header --no-annotate --python-version 3.11 -o requirements.txt
	$(BIN)/uv pip compile requirements-dev.in --no-header --no-annotate --python-version 3.11 -o requirements-dev.txt

## Benchmarks (on demand, never in the test suite): make bench  or  make bench BENCH="dispatch scale"
bench: $(VENV)/.installed-dev
	./scripts/services.sh
	$(BIN)/python -m bench $(BENCH)

## Only the parser-environment benchmark (cache hit, cold builds with uv and with pip).
bench-envs: $(VENV)/.installed-dev
	$(BIN)/python -m bench envs
