# Two commands matter: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
#: Test processes for make test (pytest-xdist); most tests wait on workers, not on the CPU.
TEST_JOBS ?= 2

.PHONY: install demo test lint format chaos bench bench-quick bench-http clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## demo: run a multi-step workflow with workers and show the result
demo: $(STAMP)
	examples/demo.sh

## test: lint, then the whole test suite (PostgreSQL found or started automatically)
test: $(STAMP)
	@# The dashboard's browser tests drive Debian's headless Chromium.
	command -v chromedriver >/dev/null && (command -v pgbouncer || test -x /usr/sbin/pgbouncer) >/dev/null && ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || (apt-get update && apt-get install -y chromium chromium-driver pgbouncer libfaketime)
	$(VENV)/bin/ruff check .
	@# Two test processes (each test file in one of them, with its own databases), then the few
	@# tests marked serial alone; exit code 5 is "none selected", e.g. with PYTEST_ARGS=tests/unit.
	$(PY) -m pytest -n $(TEST_JOBS) --dist loadfile -m "not serial" $(PYTEST_ARGS)
	$(PY) -m pytest -m serial $(PYTEST_ARGS) || [ $$? -eq 5 ]

## bench: fuseline, the peers and the PostgreSQL ceiling in one run (about 25 minutes)
bench: $(STAMP)
	@# The PgBouncer figures start Debian's pgbouncer.
	(command -v pgbouncer || test -x /usr/sbin/pgbouncer) >/dev/null || (apt-get update && apt-get install -y pgbouncer)
	bash bench/peers/run_all.sh
	$(PY) bench/fuseline_bench.py
	$(PY) bench/pickup_floor.py
	$(PY) bench/write_cost.py
	$(PY) bench/slots_bench.py
	$(PY) bench/pgbouncer_bench.py
	$(PY) bench/many_workers.py
	$(PY) bench/big_tables.py
	$(PY) bench/report.py | tee bench/results/report.md

bench-quick: $(STAMP)
	bash bench/peers/run_all.sh --quick
	$(PY) bench/fuseline_bench.py --quick
	$(PY) bench/report.py

## bench-http: fuseline server against direct database workers, and 200 workers on one server (about 3 minutes)
bench-http: $(STAMP)
	$(PY) bench/http_bench.py $(BENCH_ARGS)

## chaos: the chaos tests (tests/chaos) at the reliability matrix's full scale; takes a while.
## Each test prints its numbers, the run ends with all of them in one table, and
## FUSELINE_CHAOS_REPORT=path.json also collects them in one file.
chaos: $(STAMP)
	FUSELINE_CHAOS_SCALE=full $(PY) -m pytest tests/chaos -s $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) dist build .pytest_cache .ruff_cache *.egg-info
