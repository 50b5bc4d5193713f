# The two commands a user needs: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The local BigQuery emulator (local-bigquery) needs Python 3.13: an environment of its own.
EMULATOR_VENV  := .venv-emulator
EMULATOR_STAMP := $(EMULATOR_VENV)/.installed

.PHONY: venv test unit lint demo stack bench clean

venv: $(STAMP) $(EMULATOR_STAMP)

# The function's runtime, the tests and fake-gcs-server (pinned), built afresh when they change.
$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# local-bigquery and its DuckDB, with DuckDB's extensions put in DuckDB's cache (offline start).
# EMULATOR_PYTHON=/path/to/python3.13 chooses the interpreter (default: found on PATH or pyenv).
$(EMULATOR_STAMP): requirements-emulator.txt deploy/local/emulator-venv.sh
	deploy/local/emulator-venv.sh $(EMULATOR_VENV) requirements-emulator.txt

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

test: venv lint
	$(PY) -m pytest -q tests

demo: venv
	$(PY) -m deploy.local.demo

# STACK_ARGS: the stack's own flags (--no-function, --empty, --workdir DIR).
stack: venv
	$(PY) -m deploy.local.stack $(STACK_ARGS)

# The quick set: against local-bigquery the 200-table set is bound by the emulator and does not
# finish (README, Performance). `.venv/bin/python -m tests.benchmarks --help` for the others.
# Also writes the README's chart.
bench: venv
	$(PY) -m tests.benchmarks --quick --chart docs/benchmark.svg

clean:
	rm -rf $(VENV) $(EMULATOR_VENV) .pytest_cache .ruff_cache .stack .bench
