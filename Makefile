# corecast: the two commands are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
LISTEN ?= 0.0.0.0:4000
FUZZ_SECONDS ?= 30

PREFIX ?= /usr/local

.PHONY: bench-hooks bench-longpoll tsung chromium nats-server idle-soak bench-presence bench-history bench-cluster json-compare bench bench-2m sim uring-compare churn peers cpu-per-delivery install tune preflight run build test lint unit js soak soak-short conformance conformance-update fuzz-smoke fuzz-tools

## Build in release mode and serve on the embedded defaults (0.0.0.0:4000, all cores).
run:
	$(CARGO) build --release
	./target/release/corecast serve --listen $(LISTEN)

build:
	$(CARGO) build --release

## Everything CI checks: format, lints, unit + integration tests, the official phoenix.js client
## against the server, Autobahn conformance, fuzz smoke.
test: lint unit js soak-short conformance fuzz-smoke
	@echo "make test: all checks passed"

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## The cluster tests start their own nats-server (Debian's package) on free ports.
nats-server:
	@command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || \
	  { echo "installing nats-server (apt)"; DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server >/dev/null || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server >/dev/null; }; }

## The browser test drives Debian's chromium (puppeteer-core, no downloaded browser).
chromium:
	@command -v chromium >/dev/null || [ -x /usr/bin/chromium ] || \
	  { echo "installing chromium (apt)"; DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; }

unit: nats-server
	$(CARGO) test --workspace --all-targets

## Node 20 tests with the official `phoenix` npm client (installs tests/js/node_modules).
js: nats-server chromium
	bash scripts/js-tests.sh

## Churn + broadcast soak: zero lost/duplicated, no leaked sockets, no RSS growth.
soak:
	SOAK_SECS=$${SOAK_SECS:-600} $(CARGO) test --release --test soak -- --ignored --nocapture

## Idle soak (issue 17): SERVERS servers used briefly, left idle IDLE_SECS (default 1,800), then
## SIGTERM; fails unless every one exits within 2 s. Not in `make test` (it takes half an hour).
idle-soak: build
	python3 scripts/idle_soak.py --bin target/release/corecast --servers $${SERVERS:-4} --idle-secs $${IDLE_SECS:-1800}

soak-short:
	SOAK_SECS=60 $(CARGO) test --release --test soak -- --ignored --nocapture

## All 517 Autobahn TestSuite cases (kosoku) against `corecast serve --echo`; fails on any FAILED
## case or any regression against conformance/expected.txt.
conformance:
	bash scripts/conformance.sh

conformance-update:
	bash scripts/conformance.sh --update

fuzz-tools:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked

## A short libFuzzer run of every fuzz target, starting from the committed seeds.
fuzz-smoke: fuzz-tools
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

## Preflight: every kernel/process limit too low for CONNS connections (default 2,000,000).
preflight:
	bash tuning/check.sh --conns $${CONNS:-2000000}

## Raise kernel limits for CONNS connections (root); `make tune DRY=1` only prints.
tune:
	bash tuning/apply.sh --conns $${CONNS:-2000000} $(if $(DRY),--dry-run,)

## Install binary, config (not overwritten) and systemd unit; `make install DRY=1` only prints.
install: build
	bash scripts/install.sh --prefix $(PREFIX) $(if $(DRY),--dry-run,)

## The same broadcast scenario against corecast and three baselines (tokio-tungstenite, Go
## gorilla/websocket, Node ws), one run, ratios printed.
peers:
	bash scripts/peers.sh

## Server CPU per delivery (utime+stime / deliveries): 5,000 subscribers on one topic, 100
## broadcasts of a 77-byte frame, published three ways (one HTTP connection per POST, one socket
## pushing back to back, one keep-alive HTTP connection), for corecast, the tokio-tungstenite
## baseline and a C program that only write()s the frames; prints the table, writes
## reports/cpu/<timestamp>/summary.json. About three minutes once built.
cpu-per-delivery:
	python3 scripts/cpu_per_delivery.py

## Here, in a few minutes: 19k connections (memory per connection), a broadcast run, a one-topic
## fan-out, then the 2 M no-socket simulation. Reports in reports/bench/<timestamp>/.
bench: build
	bash scripts/bench.sh
	./target/release/corecast sim --conns 2000000 --cores 2 --topics 1

## Presence join storm (issue 12): 10,000 sockets from 4 client processes join one presence topic
## as fast as they can; diffs published, deliveries, time until every member's view agrees, server
## RSS per presence entry (against the same storm on a plain topic), next to one diff per join
## (computed). Fresh server per storm; reports in reports/presence/<timestamp>/.
bench-presence:
	python3 scripts/bench_presence.py

## Long-poll (issue 14): RSS per session next to per WebSocket (5,000 each), and broadcast -> poll
## answer latency for 200 pollers (p50/p99).
bench-longpoll:
	python3 scripts/bench_longpoll.py

## History bench (issue 16): one 2-core server, corecast-bench broadcast on ordinary topics and on
## history topics ([[history]] hist:*), alternating, ROUNDS (2) each: deliveries/s and p99 on vs
## off; then the memory one kept publication costs. Writes reports/history/<UTC>/summary.json.
bench-history:
	python3 scripts/bench_history.py --build --rounds $${ROUNDS:-2}

## Backend hooks bench (issue 15): 20 sockets (SOCKETS=200 for more) join fresh topics as fast as they can for 5 s per
## phase, without the hook (plain:*), through hooks.join_url to a trivial Node backend (hooked:*),
## then without again, all in one run: joins/s and p50/p99 per phase, and what the hook adds.
## Reports in reports/hooks/<timestamp>/.
bench-hooks: build
	@[ -d tests/js/node_modules/ws ] || npm ci --prefix tests/js --no-audit --no-fund
	node scripts/bench_hooks.mjs --sockets $${SOCKETS:-20}

## Cluster broadcast bench (issue 13): nats-server + 2 nodes (--cores 1 each, pinned to CPUs 0 and 1),
## 2,000 subscribers split across the nodes, 4 socket publishers on A at 200 msgs/s: deliveries/s,
## p50/p99 same node vs across nodes, lost/dup, NATS messages per broadcast; then the same scenario
## on one node. Reports in reports/cluster/<timestamp>/.
bench-cluster: nats-server
	python3 scripts/bench_cluster.py --build

## Phoenix's 2 M-run Tsung scenario (issue 14), scaled to this box: TSUNG_USERS (3,000) users at
## TSUNG_RATE/s (300) open /socket/websocket without vsn (Phoenix V1 JSON), join rooms:lobby, wait
## for the ok reply, heartbeat twice 30 s apart, close. Prints users/connected/replies/errors and
## connect/reply times, checks /metrics; TSUNG_SCENARIO=v2 runs the same in V2. About 2 minutes.
## Installs Debian's tsung when missing; reports in reports/tsung/<timestamp>/ (report.html).
tsung: build
	bash scripts/tsung.sh

sim: build
	./target/release/corecast sim --conns $${CONNS:-2000000}

## The 2 M scenario, for a tuned real box (see tuning/README.md). Refuses, without starting
## anything, when the preflight finds a limit too low.
bench-2m: build
	@bash tuning/check.sh --conns 2000000 || { \
	  echo "bench-2m: this machine is not ready for 2,000,000 connections (limits above)."; \
	  echo "bench-2m: run 'make tune' as root on a box with >= 16 GB, then retry."; exit 1; }
	BENCH_CONNECTIONS=2000000 BENCH_SERVER_NOFILE=2100000 BENCH_PER_PROCESS=250000 \
	  BENCH_CONNECT_RATE=20000 bash scripts/bench.sh

## Bytes per idle connection: corecast vs a task-less one-io_uring multishot-poll probe, same client.
uring-compare:
	bash scripts/uring-compare.sh

## serde_json (used) vs simd-json on the hot path's JSON job: decode a Phoenix message and
## validate its payload, 100 B to 256 KB.
json-compare:
	$(CARGO) run --release -p corecast-bench --bin json_compare

## Connection churn (connect, upgrade, join, close) for 130 s: server memory growth per cycle
## after the warm-up; fails above 1 byte per cycle.
churn: build
	python3 scripts/churn.py
