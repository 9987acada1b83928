# The two commands. Each creates .venv when needed (no internet needed beyond the package index).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test test-fast coverage lint bench clean

$(VENV)/.run-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[server]'
	touch $@

$(VENV)/.test-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(VENV)/bin/gradwatch serve --host $(HOST) --port $(PORT)

test: $(VENV)/.test-installed
	$(PY) -m pytest $(PYTEST_ARGS)

# The fast layer (tests/fast/): no server process, no worker, no browser; under a minute
# (docs/testing.md). Hypothesis's and Schemathesis's pytest plugins are not loaded: no fast test
# uses them, and importing them takes seconds.
FAST := -p no:hypothesispytest -p no:schemathesis tests/fast
test-fast: $(VENV)/.test-installed
	$(PY) -m pytest $(FAST) $(PYTEST_ARGS)

# Line coverage of server/ and trainer/ under the fast layer (docs/testing.md has the figure).
coverage: $(VENV)/.test-installed
	$(VENV)/bin/coverage run --source=server,trainer -m pytest -q $(FAST) $(PYTEST_ARGS)
	$(VENV)/bin/coverage report --sort=cover

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check trainer server tests bench examples

bench: $(VENV)/.test-installed  # the CPU benchmarks of docs/benchmarks.md (bench/gpu_check.sh: a GPU's)
	$(PY) bench/probe_overhead.py
	$(PY) bench/trainer_vs_dataloader.py --threads 1
	$(PY) bench/stream_load.py
	$(PY) bench/frontend_bench.py --data-dir /tmp/gwbench
	$(PY) bench/loop_stall.py --data-dir /tmp/gwbench
	$(PY) bench/integration_overhead.py
	$(PY) bench/page_load.py

clean:
	rm -rf $(VENV) gradwatch-data .pytest_cache .coverage
