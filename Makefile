# make run  - install requirements.txt into .venv and start the service (honcho)
# make run-cluster - the same on a local Redis Cluster (3 masters + 3 replicas in TIMER_DATA_DIR/cluster)
# make test - install requirements-dev.txt into .venv and run the test suite
# make bench / make bench-quick - install requirements-dev.txt and requirements-bench.txt,
#   then run the benchmarks on one Redis, then create and fire again on a local 3-master cluster
#   (full: at most 18 min, 4 of them on the cluster; quick: about 3 min; BENCH_SCALE=tiny: ~50 s)
# make bench-dashboard - the dashboard's pages with 100,000 pending timers (~1 min)
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin

.PHONY: run run-cluster test lint bench bench-quick bench-dashboard

$(VENV)/.run-deps: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev-deps: requirements-dev.txt $(VENV)/.run-deps
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(VENV)/.bench-deps: requirements-bench.txt $(VENV)/.dev-deps
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	touch $@

# The API is the first Procfile entry, so honcho gives it PORT itself.
run: $(VENV)/.run-deps
	PATH="$(BIN):$$PATH" exec $(BIN)/honcho start -f Procfile -p "$${PORT:-8000}"

# The local cluster's first node is TIMER_CLUSTER_PORT (7000); its six nodes use that port + 0..5
# and their cluster bus ports + 10000.
run-cluster: $(VENV)/.run-deps
	PATH="$(BIN):$$PATH" REDIS_CLUSTER_URL="redis://127.0.0.1:$${TIMER_CLUSTER_PORT:-7000}" \
		exec $(BIN)/honcho start -f Procfile.cluster -p "$${PORT:-8000}"

test: $(VENV)/.dev-deps
	PATH="$(BIN):$$PATH" $(BIN)/python -m pytest

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check

bench: $(VENV)/.bench-deps
	PATH="$(BIN):$$PATH" $(BIN)/python -m bench.run --scale "$${BENCH_SCALE:-full}"

bench-quick: $(VENV)/.bench-deps
	PATH="$(BIN):$$PATH" $(BIN)/python -m bench.run --scale "$${BENCH_SCALE:-quick}"

bench-dashboard: $(VENV)/.dev-deps
	PATH="$(BIN):$$PATH" $(BIN)/python -m bench.dashboard
