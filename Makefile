# The two commands a user needs: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv test unit lint demo stack bench clean

venv: $(STAMP)

# One virtual environment with the runtime, the tests and the emulators (pinned), and the
# DuckDB spatial extension copied into DuckDB's cache (bqemulator will not start without it).
$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -c "import duckdb; from duckdb_extensions import import_extension; import_extension('spatial', con=duckdb.connect())"
	touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

unit: venv
	$(PY) -m pytest -q tests/unit

test: venv lint
	$(PY) -m pytest -q tests

demo: venv
	$(PY) -m deploy.local.demo

stack: venv
	$(PY) -m deploy.local.stack

bench: venv
	$(PY) -m tests.benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .stack .bench
