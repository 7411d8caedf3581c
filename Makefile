# conductor: the two commands (`make demo`, `make test`) and a few helpers.
# Every target installs what it needs first (scripts/install-deps.sh is a
# no-op taking well under a second when everything is present).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
# rustup's cargo lives in ~/.cargo/bin; CI and non-login shells may lack it.
export PATH := $(HOME)/.cargo/bin:$(PATH)

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
# Extension build for the e2e tests. Dev profile by default: after a change
# in src/ it rebuilds in seconds where release takes minutes on 2 cores.
# `make test EXT_PROFILE=--release` tests the optimized build.
EXT_PROFILE ?=
# Each e2e test starts its own Postgres and nodes on free ports, so tests
# can run in parallel; 2 matches the machine's cores.
E2E_THREADS ?= 2
# `cargo pgrx install` writes into Postgres' dirs: sudo unless root.
SUDO_FLAG := $(if $(filter 0,$(shell id -u)),,--sudo)
# The e2e tests run a private copy of Postgres 15 (scripts/test-pg.sh) with
# the test build installed into it, so `make test` never replaces the build
# the demo cluster loads from the system directories. It lives outside the
# checkout, which the Postgres user may not be able to enter; one per
# checkout.
TEST_PG_DIR ?= /var/tmp/conductor-test-pg-$(shell printf '%s' "$(CURDIR)" | md5sum | cut -c1-12)
TEST_PG_CONFIG = $(TEST_PG_DIR)/lib/postgresql/15/bin/pg_config
# sql/conductor--<version>.sql: the install scripts of released versions.
RELEASED_SCRIPTS = $(wildcard sql/conductor--*.sql)

.PHONY: deps demo stop status test unit e2e ext node demo-check bench bench-shards fmt released-scripts

deps:
	scripts/install-deps.sh

## make demo: build, start Postgres 15 + four nodes, load sample data
demo: deps
	scripts/cluster.sh start

## make stop: stop the demo cluster
stop:
	scripts/cluster.sh stop

status:
	scripts/cluster.sh status || true

## make test: every test (format, unit, end-to-end, the demo's build)
test: deps
	cargo fmt --all -- --check
	$(MAKE) --no-print-directory unit e2e demo-check

# Postgres-free crates (the workspace's default members): seconds.
unit:
	cargo test

# The extension installed into the tests' copy of Postgres 15 + the node binary, then
# the end-to-end tests against them.
# A real libSQL server (sqld) for tests/e2e/tests/sqld.rs, sqld_faults.rs
# and the sqld test of special_values.rs, when one is installed: `make test SQLD=/path/to/sqld`, else
# sqld on PATH or in ~/.local/bin. Without one, those tests say they were
# skipped.
SQLD ?= $(firstword $(shell command -v sqld 2>/dev/null) $(wildcard $(HOME)/.local/bin/sqld))

e2e: ext node
	@[ -n "$(SQLD)" ] || echo "e2e: no sqld binary found: tests/e2e/tests/sqld.rs, sqld_faults.rs and the sqld test of special_values.rs are skipped (make test SQLD=/path/to/sqld runs them)"
	CONDUCTOR_PG_BINDIR=$(TEST_PG_DIR)/lib/postgresql/15/bin SQLD=$(SQLD) \
		cargo test -p conductor-e2e -- --test-threads=$(E2E_THREADS)

# The extension, installed into the tests' private Postgres copy.
ext:
	PG_CONFIG=$(PG_CONFIG) scripts/test-pg.sh $(TEST_PG_DIR) >/dev/null
	cargo pgrx install -p conductor --pg-config $(TEST_PG_CONFIG) $(EXT_PROFILE)
	$(MAKE) --no-print-directory released-scripts PG_CONFIG_FOR=$(TEST_PG_CONFIG)

# The install scripts of released versions (cargo pgrx installs the current
# version's and the upgrade scripts only), so a database can be created at a
# released version and upgraded with ALTER EXTENSION conductor UPDATE.
PG_CONFIG_FOR ?= $(PG_CONFIG)
released-scripts:
	install -m 0644 $(RELEASED_SCRIPTS) "$$($(PG_CONFIG_FOR) --sharedir)/extension/"

node:
	cargo build -p conductor-node

# The demo's setup, then `make ext`: the demo must still load its release
# build. Its cluster, ports and copy of Postgres are its own, so a running
# demo is left alone. It builds the release build (shared with `make demo`
# and `make bench`). CHECK_SOURCE_CHANGE=1 also checks `make demo` after a
# change in src/: two more release builds of the extension, and it edits
# the checkout meanwhile, so only under CI by default.
CHECK_SOURCE_CHANGE ?= $(if $(filter true 1,$(CI)),1,)
demo-check:
	CHECK_SOURCE_CHANGE=$(CHECK_SOURCE_CHANGE) scripts/check-demo-build.sh

## make bench: conductor vs postgres_fdw partitions vs a local table;
## writes docs/BENCHMARKS.md. BENCH_QUICK=1 for a short development run.
bench: deps
	bench/run.sh

## make bench-shards: latency against shard count (16 … 4096 shards);
## writes its section of docs/BENCHMARKS.md. BENCH_QUICK=1 for a short run.
bench-shards: deps
	bench/shard_count.sh

fmt:
	cargo fmt --all
