# Everyday commands; `make` alone lists them.
# Services: `make up` (Docker) or `make services` (local binaries, data under target/demo/).
# Extra flags for the binaries: make run-replica ARGS="--orders 1000 --rate 200"

DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
NATS_URL ?= nats://127.0.0.1:4222
export DATABASE_URL NATS_URL

LEADER_PORT ?= 8080
REPLICA_PORT ?= 8081
ARGS ?=
DENY ?=
FUZZ ?= message_builder
FUZZ_TIME ?= 180

.DEFAULT_GOAL := help
.PHONY: help up down services services-stop test build run-leader run-replica run-subscriber demo bench fmt lint ci deny fuzz

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  make %-15s %s\n", $$1, $$2 }'

up: ## start PostgreSQL 17 and NATS 2.10 with JetStream in Docker; waits until healthy
	docker compose up -d --wait

down: ## stop the Docker services and delete their data
	docker compose down -v

services: ## make PostgreSQL and NATS answer, starting local ones (target/demo/) if they do not
	bash scripts/services.sh

services-stop: ## stop the servers that `make services` started, and only those
	bash scripts/services.sh stop

test: ## every test of the workspace (needs PostgreSQL and NATS)
	cargo test --workspace

build: ## release build of the whole workspace
	cargo build --release --workspace

run-leader: ## orders service that relays while it leads (HTTP on LEADER_PORT, 8080)
	cargo run --release -p example -- --role leader --port $(LEADER_PORT) $(ARGS)

run-replica: ## orders service that never relays (HTTP on REPLICA_PORT, 8081)
	cargo run --release -p example -- --role replica --port $(REPLICA_PORT) $(ARGS)

run-subscriber: ## print and check what arrives on the ORDERS stream
	cargo run --release -p subscriber -- $(ARGS)

demo: ## end to end: leader, 5000 orders from a replica, subscriber checks them all
	bash scripts/demo.sh

# The bench reaches PostgreSQL without TLS unless DATABASE_URL names an sslmode: on one machine
# TLS only encrypts a local socket (Debian's server offers it, and `prefer` takes it), and its
# CPU would be missing from the servers and the relay the figures are about. The JSON records
# the connection used (versions.postgres_connection).
BENCH_DATABASE_URL ?= $(if $(findstring sslmode=,$(DATABASE_URL)),$(DATABASE_URL),$(DATABASE_URL)$(if $(findstring ?,$(DATABASE_URL)),&,?)sslmode=disable)

bench: ## benchmark scenarios as JSON lines, also appended to target/bench/results.jsonl (ARGS=--quick: under a minute)
	DATABASE_URL='$(BENCH_DATABASE_URL)' cargo run --release -p outbox-bench -- $(or $(ARGS),--repeat 5)

fmt: ## format the workspace
	cargo fmt --all

lint: ## formatting check and clippy, warnings as errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

deny: ## supply chain: advisories, licences, duplicate crates, sources (cargo install cargo-deny --locked; DENY="licenses bans sources" offline)
	cargo deny check $(DENY)

fuzz: ## run a fuzz target of fuzz/ (FUZZ=message_builder|traceparent|subscriber_decode, FUZZ_TIME=180 s; nightly, cargo-fuzz)
	cd fuzz && cargo +nightly fuzz run -a $(FUZZ) -- -max_total_time=$(FUZZ_TIME)

ci: ## what CI runs: services, lint, tests, with timings
	bash .ci/run
