# The two commands of the README are the contract with a new user:
#   make run   start the gateway on its embedded default (SQLite, example config)
#   make test  install everything and pass every test, on a fresh machine
# Nothing but Python, apt and npm is assumed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= tryggbro.example.toml
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
MEDPLUM := tests/peers/medplum
NODE_HL7 := tests/peers/node-hl7

# Demo credentials for `make run` only. Production sets its own in the environment.
export TRYGGBRO_ALARMPLATFORM_API_KEY ?= demo-alarmplatform-key
export TRYGGBRO_ADMIN_VIEWER_TOKENS ?= demo-viewer-token
export TRYGGBRO_ADMIN_OPERATOR_TOKENS ?= demo-operator-token

.PHONY: install run test lint typecheck peers postgres medplum node-hl7 peer-medplum wrk bench bench-medplum bench-mllp bench-flood bench-backlog bench-memory bench-alarm bench-scaleout bench-startup bench-flapping chaos clean

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' $(foreach p,$(wildcard plugins/*/pyproject.toml),-e $(dir $(p)))
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/tryggbro --config $(CONFIG) serve

# Real peers the tests talk to: PostgreSQL from Debian, the Medplum FHIR engine from npm.
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing PostgreSQL from Debian"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends postgresql; \
	fi

$(MEDPLUM)/node_modules/.package-lock.json: $(MEDPLUM)/package-lock.json
	cd $(MEDPLUM) && npm ci --no-audit --no-fund --loglevel=error

medplum: $(MEDPLUM)/node_modules/.package-lock.json

# node-hl7-server 2.5.0: an MLLP receiver for the mllp destination tests.
$(NODE_HL7)/node_modules/.package-lock.json: $(NODE_HL7)/package-lock.json
	cd $(NODE_HL7) && npm ci --no-audit --no-fund --loglevel=error

node-hl7: $(NODE_HL7)/node_modules/.package-lock.json

peers: postgres medplum node-hl7

# The Medplum FHIR engine on 127.0.0.1:8103, to try the fhir-rest destination by hand.
peer-medplum: medplum
	cd $(MEDPLUM) && PORT=8103 STRICT=1 node --experimental-websocket server.mjs

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) peers lint typecheck
	$(BIN)/pytest

# Load generator: wrk from Debian (the client must not be the bottleneck).
wrk:
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends wrk; }

bench: $(STAMP) wrk
	$(BIN)/python bench/ingest_e2e.py --runs 5 --seconds 10

# End to end to the Medplum FHIR engine, beside Medplum's own ceiling (same transactions
# posted straight to it).
bench-medplum: $(STAMP) medplum wrk
	$(BIN)/python bench/medplum_e2e.py --runs 3 --seconds 10

# MLLP ingest: the hub's mllp source (durable) vs hl7apy's and python-hl7's servers.
bench-mllp: $(STAMP)
	$(BIN)/python bench/mllp_ingest.py --runs 5 --seconds 5

# Recipe C "Flood" for 5 minutes: 1,000 malformed inputs/s on every listener of a real
# `tryggbro serve` while valid alarms arrive; writes its section of bench/RESULTS.md.
bench-flood: $(STAMP)
	$(BIN)/python bench/flood.py --seconds 300 --rate 1000 --write-results

# Delivery side (issue 5): backlog drain, outbox memory, alarm latency, PostgreSQL scale-out.
bench-backlog: $(STAMP)
	$(BIN)/python bench/delivery.py backlog --runs 3

bench-memory: $(STAMP)
	$(BIN)/python bench/delivery.py memory --runs 1 --seconds 30

bench-alarm: $(STAMP)
	$(BIN)/python bench/delivery.py alarm --runs 3

bench-scaleout: $(STAMP) postgres
	$(BIN)/python bench/delivery.py scaleout --runs 3

# Recipe B's flapping destination, measured: a healthy destination's latency alone and
# beside one that cycles through blackhole, refused, reset and 503.
bench-flapping: $(STAMP)
	$(BIN)/python bench/flapping.py --runs 8

# Start-up: spawn -> /readyz, -> first durable ACK (webhook, MLLP), -> first delivery, for
# `tryggbro serve` with the example config. Before/after: STARTUP_SOURCE=<other checkout>.
STARTUP_RUNS ?= 7
bench-startup: $(STAMP)
	$(BIN)/python bench/startup.py --runs $(STARTUP_RUNS) $(if $(STARTUP_SOURCE),--source $(STARTUP_SOURCE))

# Crash suite, long version: >= 500 kill -9 cycles on SQLite and on PostgreSQL
# (tests/chaos/harness.py); writes its section of bench/RESULTS.md.
CHAOS_CYCLES ?= 500
chaos: $(STAMP) postgres
	$(BIN)/python bench/chaos.py --cycles $(CHAOS_CYCLES)

clean:
	rm -rf $(VENV) var bench/out $(MEDPLUM)/node_modules $(NODE_HL7)/node_modules
