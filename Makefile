# Presence server. On a machine with only Python 3.11+, `make run` and `make test` create
# the virtualenv and install everything first; re-running skips that while up to date.

VENV ?= .venv
PYTHON ?= python3
WORKERS ?= $(shell nproc 2>/dev/null || $(PYTHON) -c 'import os; print(os.cpu_count() or 1)')
PORT ?= 8765
HOST ?= 127.0.0.1
URL ?= ws://$(HOST):$(PORT)/ws
TLS_CERT ?=
TLS_KEY ?=
TLS_ARGS := $(if $(TLS_CERT),--tls-cert $(TLS_CERT) --tls-key $(TLS_KEY))
# Prometheus metrics of every process at http://$(HOST):METRICS_PORT/metrics (the
# launcher's default port when empty; 0 turns them off).
METRICS_PORT ?=
METRICS_ARGS := $(if $(METRICS_PORT),--metrics-port $(METRICS_PORT))
# LOG_FORMAT=json: every process logs one JSON object per line (default: plain text).
LOG_FORMAT ?=
LOG_ARGS := $(if $(LOG_FORMAT),--log-format $(LOG_FORMAT))
# The backend API (docs/API.md): off unless API_PORT is given, and never without a token.
API_PORT ?=
API_TOKEN_FILE ?=
API_ARGS := $(if $(API_PORT),--api-port $(API_PORT) --api-token-file "$(API_TOKEN_FILE)")
# One role per machine (docs/operating.md, Running on several machines): all, coordinator, workers.
ROLE ?= all
COORDINATOR ?=
BACKBONE ?=
KEYS ?= keys
ADVERTISE ?=
ROLE_ARGS := --role $(ROLE) $(if $(filter-out all,$(ROLE)),--keys $(KEYS)) \
  $(if $(COORDINATOR),--coordinator $(COORDINATOR)) $(if $(BACKBONE),--backbone $(BACKBONE)) \
  $(if $(ADVERTISE),--advertise $(ADVERTISE))
ARGS ?=
PYTEST_ARGS ?=

# Half a TLS or API configuration is refused before anything starts, naming the variables.
ifneq ($(filter run,$(MAKECMDGOALS)),)
  ifeq ($(if $(TLS_CERT),x)$(if $(TLS_KEY),x),x)
    $(error TLS_CERT and TLS_KEY go together: give both (make run TLS_CERT=cert.pem TLS_KEY=key.pem) or neither)
  endif
  ifneq ($(API_PORT),)
    ifeq ($(API_TOKEN_FILE),)
      $(error API_PORT needs API_TOKEN_FILE: the backend API never starts without a token (make run API_PORT=$(API_PORT) API_TOKEN_FILE=path))
    endif
  endif
endif

VPY := $(VENV)/bin/python
# Two stamps in one virtualenv: the runtime (what `make run` needs, the project and its
# dependencies alone) and, on top of it, the test extra (`make test`).
RUNTIME_STAMP := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
TYPED := coordinator workers shared scripts
LINTED := $(TYPED) tests

.DEFAULT_GOAL := help
.PHONY: help install install-runtime run keys watch test test-fast test-js lint format clean load bench

help:
	@echo "make run     start a local cluster: WORKERS=$(WORKERS) HOST=$(HOST) PORT=$(PORT)"
	@echo "             and open http://$(HOST):$(PORT)/ (TLS_CERT=... TLS_KEY=... for https)"
	@echo "             (ARGS=\"...\" is passed to scripts/cluster.py, see its --help)"
	@echo "             metrics at http://$(HOST):$(or $(METRICS_PORT),$(if $(filter coordinator,$(ROLE)),9766,9765))/metrics (METRICS_PORT=0: off)"
	@echo "             LOG_FORMAT=json: one JSON object per log line"
	@echo "             API_PORT=... API_TOKEN_FILE=...: the backend API (docs/API.md)"
	@echo "             ROLE=coordinator [BACKBONE=0.0.0.0:7100] KEYS=dir: this machine runs the"
	@echo "             coordinator alone; ROLE=workers COORDINATOR=host:7100 KEYS=dir: the workers"
	@echo "make keys    CURVE keys for several machines: MACHINES=\"web1 web2\" [KEYS=keys]"
	@echo "             (again with MACHINES=web3 on the same KEYS: adds web3, keeps the rest)"
	@echo "make watch   join the lobby at URL=$(URL) and watch, as the same identity every run"
	@echo "             (ARGS=\"--key-file k\" or ARGS=--throwaway; see its --help)"
	@echo "make test    lint, then run the tests (PYTEST_ARGS=\"...\")"
	@echo "             (make test-fast: no lint, only tests that start no process; seconds)"
	@echo "make load    load-test the server at URL=$(URL): ARGS=\"mass-join 100\""
	@echo "             (ARGS=\"--start cluster churn\" starts its own; python -m scripts.loadtest -h)"
	@echo "make bench   run the benchmark suite (~20 min), write BENCHMARKS.md and docs/latency.png"
	@echo "make test-js the JavaScript client's unit tests (node --test)"
	@echo "make lint    ruff check, ruff format --check, mypy --strict"
	@echo "make format  ruff fixes and formatting"
	@echo "make clean   remove $(VENV) and caches"
	@echo "The first run creates $(VENV) with $(PYTHON) (3.11+ required; PYTHON=... to choose);"
	@echo "make run installs the server alone there (make install-runtime), make test adds the"
	@echo "test extra."

# A stamp is newer than pyproject.toml once the environment matches it. What installing
# says goes to stderr: the standard output of `make run` is the cluster's alone.
define new_venv
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "error: $(PYTHON) is missing or older than Python 3.11, which this project needs." >&2; \
	  echo "       Install 3.11+ and run e.g. make PYTHON=python3.11 ... (then make clean first" >&2; \
	  echo "       if $(VENV) was made with an older one)." >&2; \
	  exit 1; }
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV) >&2
endef

$(RUNTIME_STAMP): pyproject.toml
	@echo "installing into $(VENV) (first run; make install-runtime)" >&2
	$(new_venv)
	@$(VPY) -m pip install --quiet -e . >&2
	@touch $@

# The runtime and the test extra in one pip run (a fresh clone's make test resolves
# once, not twice); both stamps are then fresh.
$(STAMP): pyproject.toml
	@echo "installing into $(VENV) with the test extra (make install)" >&2
	$(new_venv)
	@$(VPY) -m pip install --quiet -e '.[test]' >&2
	@touch $@ $(RUNTIME_STAMP)

install: $(STAMP)

# The server alone (docs/operating.md, Production install): no test or bench extra.
install-runtime: $(RUNTIME_STAMP)

# The benchmark extra (matplotlib for the plot) only when `make bench` needs it.
$(BENCH_STAMP): $(STAMP)
	$(VPY) -m pip install --quiet -e '.[test,bench]'
	@touch $@

run: $(RUNTIME_STAMP)
	@$(VPY) scripts/cluster.py --workers $(WORKERS) --host $(HOST) --port $(PORT) $(TLS_ARGS) \
	  $(API_ARGS) $(ROLE_ARGS) $(METRICS_ARGS) $(LOG_ARGS) $(ARGS)

# One key directory per machine (docs/operating.md, Running on several machines); never overwrites.
MACHINES ?=
keys: $(RUNTIME_STAMP)
	@test -n "$(MACHINES)" || { echo 'error: name the worker machines: make keys MACHINES="web1 web2"' >&2; exit 2; }
	$(VPY) scripts/backbone_keys.py --cluster $(KEYS) $(MACHINES)

watch: $(RUNTIME_STAMP)
	$(VPY) scripts/watch_lobby.py --url $(URL) $(ARGS)

load: $(STAMP)
	$(VPY) -m scripts.loadtest --url $(URL) $(ARGS)

bench: $(BENCH_STAMP)
	$(VPY) scripts/bench.py $(ARGS)

# The pure tests on every core (pytest-xdist), then the process tests two modules at a
# time (--dist loadfile: a module's shared cluster starts once): they mostly wait on
# timers and other processes (126 s of CPU in 138 s on 2 cores; 251 s one at a time), and
# their deadlines hold with a neighbour. Exit status 5 is pytest's "no test selected"
# (PYTEST_ARGS naming tests of one kind only).
test: lint test-js
	$(VPY) -m pytest -m "not process" -n auto $(PYTEST_ARGS) || [ $$? = 5 ]
	$(VPY) -m pytest -m process -n 2 --dist loadfile $(PYTEST_ARGS) || [ $$? = 5 ]

# The JavaScript client's unit tests (Node.js 20+, no npm packages).
test-js:
	@command -v node >/dev/null 2>&1 || { \
	  echo "error: node is missing: the JavaScript client's tests need Node.js 20 or newer" >&2; \
	  echo "       (Debian: apt-get install nodejs; or https://nodejs.org)" >&2; exit 1; }
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' || { \
	  echo "error: node $$(node --version) is too old: the JavaScript client needs Node.js 20+" >&2; \
	  exit 1; }
	node --test tests/js/

# Unit and property tests only: those marked `process` start real processes and are slow.
test-fast: $(STAMP)
	$(VPY) -m pytest -m "not process" -n auto $(PYTEST_ARGS)

lint: $(STAMP)
	$(VPY) -m ruff check $(LINTED)
	$(VPY) -m ruff format --check $(LINTED)
	$(VPY) -m mypy --strict $(TYPED)

format: $(STAMP)
	$(VPY) -m ruff check --fix $(LINTED)
	$(VPY) -m ruff format $(LINTED)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis build *.egg-info
	find $(LINTED) -name __pycache__ -type d -prune -exec rm -rf {} +
