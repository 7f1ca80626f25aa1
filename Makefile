# tally — build, lint, test and package.
#
#   make test          every test: lint, cargo test, the packaged-binary check, the container test
#                      (first `make deps`)
#   make deps          scripts/deps.sh: as root, apt-get installs what the tests need and is
#                      missing (Chromium, nftables, Docker, ...); otherwise it lists what is
#                      missing and which suites will fail or be skipped
#   make package       dist/challenge.tar.gz (static executable, see SPEC §1)
#   make package-test  package, then run it in an empty chroot (scripts/check-package.sh)
#   make image         the container image tally:<version> and tally:latest (docker/Dockerfile)
#   make image-test    image, then the container tests: a compose cluster paused, cut off,
#                      restarted and killed (tests/container.rs; needs Docker and a compose tool),
#                      and the TLS cluster of `make cluster-tls` (docker/test-tls.sh; needs curl)
#   make cluster       image, then a three-node compose cluster on 127.0.0.1:7781-7783
#   make cluster-tls   the same with TLS (docker/compose-tls.yaml): the image makes a CA and the
#                      nodes' certificates in target/cluster-tls/<project>; clients use its ca/ca.pem
#   make cluster-down  stop either and remove its containers, network, volume and certificates
#   make lint          cargo fmt --check, clippy and rustdoc with warnings denied
#   make demo          a three-node cluster on loopback
#   make bench         measure tally beside Redis and a bare HTTP server (scripts/bench.py);
#                      a few minutes; results in target/bench/results.json
#   make bench-guard   the regression guard (part of make test): B1 beside Redis and B2/B3, short,
#                      with the packaged binary; fails when a ratio falls below half of the value
#                      recorded in scripts/bench-guard.json
#   make upgrade-from  the older tally the rolling-upgrade test starts from (part of make test):
#                      built once from the commit scripts/upgrade-from.sh names, cached outside
#                      the clone (~/.cache/tally/upgrade-from/<commit>/tally)
#   make bench-micro   criterion micro-benchmarks: CRDT merge, body parser, message codec
#   make sweep         the deterministic simulation over many seeds (release build):
#                      SEEDS=N seeds from FIRST=K (defaults 1000 from 1); a line per
#                      failing seed with the command that replays it
#   make soak          a three-node cluster of the release binary under steady load and spread
#                      faults for SOAK_SECS (1800): no increment lost, reads in bounds, no leak
#                      (tests/soak.rs, as root; not part of make test)
#   make man           the manual page, target/man/tally.1, and shell completions beside it
#   make clean         remove build output and dist/
#
# Variables: CARGO_TEST_ARGS (passed to cargo test, e.g. CARGO_TEST_ARGS='-- --nocapture'),
#            DEPS_ARGS (passed to scripts/deps.sh; DEPS_ARGS=--check reports, never installs),
#            CARGO_LOCKED (default --locked; set empty to let cargo update Cargo.lock),
#            DEMO_ARGS (passed to `tally demo`, e.g. DEMO_ARGS='--nodes 5 --with-load'),
#            BENCH_ARGS (passed to scripts/bench.py; BENCH_ARGS=--smoke runs 1 round x 1 s
#            with small sizes, to check the harness),
#            BENCH_ROUNDS (3), BENCH_SECONDS (10), BENCH_B4_NAMES (100000), BENCH_FULL (1 adds
#            the 1M-name runs), BENCH_DIR (data folder parent, default target/bench),
#            BENCH_KEEP (1 keeps data and logs), BENCH_ONLY (b1, b2, b4, b7 or tls: one part),
#            BENCH_TALLY (another tally binary to measure): read by scripts/bench.py from the environment.
#            IMAGE (image name, default tally), COMPOSE (default `docker compose` when it
#            works, else docker-compose), CLUSTER_PROJECT (compose project, default tally);
#            docker/compose.yaml lists the cluster's settings (TALLY_NET, TALLY_PORT_1, ...).
#            SOAK_SECS (1800), SOAK_SEED, SOAK_RATE (200 increments/s), SOAK_SAMPLE_SECS (5),
#            SOAK_WARMUP_SECS (60), SOAK_PLANT_LEAK (rss,fds,disk: plant a leak to see it caught),
#            SOAK_BIN (node binary): read by tests/soak.rs from the environment.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DELETE_ON_ERROR:
.SUFFIXES:

CARGO        ?= cargo
CARGO_LOCKED ?= --locked
CARGO_TEST_ARGS ?=
DEPS_ARGS    ?=
DEMO_ARGS    ?=
BENCH_ARGS   ?=
PYTHON       ?= python3

TARGET  := x86_64-unknown-linux-gnu
BIN     := target/$(TARGET)/release/tally
DIST    := dist
STAGE   := $(DIST)/stage
TARBALL := $(DIST)/challenge.tar.gz
EXE     := challenge/bin/challenge-executable

# Timestamps inside the tarball: the last commit's time, so that two packages
# of the same commit are byte-identical.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)

.PHONY: all deps package static-check package-test lint test cargo-test demo bench bench-guard bench-micro soak man clean sweep upgrade-from \
	image image-test cluster cluster-tls cluster-down

all: package

# --target keeps RUSTFLAGS away from build scripts and proc-macros, which must
# stay dynamically linked host programs. The musl target is deliberately not
# used: glibc linked statically needs nothing but the kernel at run time.
package:
	RUSTFLAGS="-C target-feature=+crt-static" \
	  $(CARGO) build $(CARGO_LOCKED) --release --target $(TARGET) --bin tally
	$(MAKE) --no-print-directory static-check
	rm -rf "$(STAGE)" "$(TARBALL)" "$(TARBALL).tmp"
	install -d -m 0755 "$(STAGE)/challenge" "$(STAGE)/challenge/bin"
	install -m 0755 "$(BIN)" "$(STAGE)/$(EXE)"
	tar --sort=name --owner=0 --group=0 --numeric-owner \
	    --mtime="@$(SOURCE_DATE_EPOCH)" --format=gnu \
	    -C "$(STAGE)" -cf - challenge | gzip -n > "$(TARBALL).tmp"
	@listing="$$(tar -tzf "$(TARBALL).tmp")"; \
	expected=$$'challenge/\nchallenge/bin/\nchallenge/bin/challenge-executable'; \
	if [[ "$$listing" != "$$expected" ]]; then \
	  echo "package: FAIL: unexpected tarball contents:" >&2; echo "$$listing" >&2; exit 1; \
	fi
	mv "$(TARBALL).tmp" "$(TARBALL)"
	rm -rf "$(STAGE)"
	@echo "package: $(TARBALL) ($$(stat -c %s "$(TARBALL)") bytes; executable $$(stat -c %s "$(BIN)") bytes)"

# Fails unless the release binary is fully static: no NEEDED shared library
# and no program interpreter. Output is captured before grepping so that a
# SIGPIPE under pipefail cannot turn a match into a miss.
static-check:
	@test -x "$(BIN)" || { echo "static-check: FAIL: $(BIN) missing" >&2; exit 1; }
	@dyn="$$(readelf -d "$(BIN)")"; \
	hdrs="$$(readelf -lW "$(BIN)")"; \
	if grep -E '\(NEEDED\)' <<<"$$dyn" >&2; then \
	  echo "static-check: FAIL: $(BIN) needs the shared libraries above" >&2; exit 1; fi; \
	if grep -E '^[[:space:]]*INTERP[[:space:]]|program interpreter' <<<"$$hdrs" >&2; then \
	  echo "static-check: FAIL: $(BIN) has a program interpreter (dynamically linked)" >&2; exit 1; fi; \
	if ! grep -qE '^[[:space:]]*LOAD[[:space:]]' <<<"$$hdrs"; then \
	  echo "static-check: FAIL: readelf shows no LOAD segment; is $(BIN) an ELF executable?" >&2; exit 1; fi
	@echo "static-check: OK: $$(file -b "$(BIN)" 2>/dev/null || echo 'no NEEDED, no INTERP')"

package-test: package
	bash scripts/check-package.sh "$(TARBALL)"

# ------------------------------------------------------------ container image
# The package's executable, staged as a build context beside docker/'s files:
# the image is FROM scratch, so nothing is pulled (see docker/Dockerfile).
VERSION         := $(shell sed -n '/^\[package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
IMAGE           ?= tally
IMAGE_CONTEXT   := target/image
DOCKER          ?= docker
COMPOSE         ?= $(shell if $(DOCKER) compose version >/dev/null 2>&1; then echo '$(DOCKER) compose'; else echo docker-compose; fi)
CLUSTER_PROJECT ?= tally

image: package
	rm -rf "$(IMAGE_CONTEXT)"
	install -d -m 0755 "$(IMAGE_CONTEXT)" "$(IMAGE_CONTEXT)/etc"
	tar -xzf "$(TARBALL)" -C "$(IMAGE_CONTEXT)" --no-same-owner
	install -m 0644 docker/passwd docker/group "$(IMAGE_CONTEXT)/etc/"
	install -d -m 0755 "$(IMAGE_CONTEXT)/tally-data"
	install -m 0644 docker/Dockerfile "$(IMAGE_CONTEXT)/Dockerfile"
	$(DOCKER) build \
	    --build-arg VERSION="$(VERSION)" \
	    --build-arg REVISION="$$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
	    --build-arg CREATED="$$(date -u -d "@$(SOURCE_DATE_EPOCH)" +%Y-%m-%dT%H:%M:%SZ)" \
	    $$(src="$$(git remote get-url origin 2>/dev/null)" && echo --label "org.opencontainers.image.source=$$src") \
	    -t "$(IMAGE):$(VERSION)" -t "$(IMAGE):latest" "$(IMAGE_CONTEXT)"
	@echo "image: $(IMAGE):$(VERSION) and $(IMAGE):latest ($$($(DOCKER) image inspect -f '{{.Size}}' "$(IMAGE):$(VERSION)") bytes)"

# The container test is #[ignore]d in plain `cargo test` (it needs the image):
# here it runs with the image just built, then the TLS cluster's test.
image-test: image
	TALLY_IMAGE="$(IMAGE):$(VERSION)" TALLY_COMPOSE="$(COMPOSE)" \
	  $(CARGO) test $(CARGO_LOCKED) --test container -- --ignored --nocapture
	TALLY_IMAGE="$(IMAGE):$(VERSION)" COMPOSE="$(COMPOSE)" bash docker/test-tls.sh

cluster: image
	TALLY_IMAGE="$(IMAGE):$(VERSION)" COMPOSE="$(COMPOSE)" CLUSTER_PROJECT="$(CLUSTER_PROJECT)" \
	  bash docker/cluster.sh up

cluster-tls: image
	TALLY_IMAGE="$(IMAGE):$(VERSION)" COMPOSE="$(COMPOSE)" CLUSTER_PROJECT="$(CLUSTER_PROJECT)" \
	  bash docker/cluster.sh up --tls

cluster-down:
	COMPOSE="$(COMPOSE)" CLUSTER_PROJECT="$(CLUSTER_PROJECT)" bash docker/cluster.sh down

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy $(CARGO_LOCKED) --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc $(CARGO_LOCKED) --workspace --no-deps

# Plain `cargo test` runs unit, integration and doc tests; --no-fail-fast
# runs every test binary even after one fails, so CI reports all failures.
cargo-test:
	$(CARGO) test $(CARGO_LOCKED) --workspace --no-fail-fast $(CARGO_TEST_ARGS)

# The older binary of the rolling-upgrade test (tests/chaos.rs), built here
# so that its one build shows in the log rather than inside a test.
upgrade-from:
	@echo "upgrade-from: $$(bash scripts/upgrade-from.sh)"

# What the tests need from the system (scripts/deps.sh says what it does).
deps:
	bash scripts/deps.sh $(DEPS_ARGS)

# The one command that runs every test, in order, stopping at the first failure.
test:
	$(MAKE) --no-print-directory deps
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory upgrade-from
	$(MAKE) --no-print-directory cargo-test
	$(MAKE) --no-print-directory package-test
	$(MAKE) --no-print-directory image-test
	$(MAKE) --no-print-directory bench-guard

demo:
	$(CARGO) run $(CARGO_LOCKED) --release --bin tally -- demo $(DEMO_ARGS)

# Needs wrk, redis-server and redis-tools (installed with apt-get when run as root).
bench:
	$(CARGO) build $(CARGO_LOCKED) --release --bin tally --example http_ceiling
	$(PYTHON) scripts/bench.py $(BENCH_ARGS)

SEEDS ?= 1000
FIRST ?= 1

# Two tests split the seeds (even, odd) so both cores work; each prints how
# many seeds it ran, how many on the log engine, and how many failed.
sweep:
	TALLY_SIM_SEEDS=$(SEEDS) TALLY_SIM_FIRST=$(FIRST) TALLY_SIM_FRESH=0 \
	  $(CARGO) test $(CARGO_LOCKED) --release --test simulation random_faults -- --nocapture

# Rough: ratios of one short round, so only a 2x regression fails it. The
# recorded values are this guard's own output on the reference machine (see
# BENCHMARKS.md); raise them when a change makes tally faster.
bench-guard: package
	BENCH_TALLY="$(BIN)" $(PYTHON) scripts/bench.py --guard scripts/bench-guard.json

# Criterion micro-benchmarks (a package of their own: `cargo test` never builds criterion).
bench-micro:
	$(CARGO) bench $(CARGO_LOCKED) --manifest-path benches/micro/Cargo.toml --target-dir target

# The soak is #[ignore]d in plain `cargo test` (it is long and needs root): here it
# runs against the release binary (cargo test --release builds it as the test's node).
soak:
	$(CARGO) build $(CARGO_LOCKED) --release --bin tally
	env -u TALLY_CHAOS_BIN $(CARGO) test $(CARGO_LOCKED) --release --test soak -- --ignored --nocapture

man:
	$(CARGO) build $(CARGO_LOCKED) --release --bin tally
	install -d target/man
	target/release/tally man > target/man/tally.1
	for shell in bash zsh fish; do target/release/tally completion $$shell > target/man/tally.$$shell; done
	@echo "man: target/man/tally.1 (man -l target/man/tally.1), completions target/man/tally.{bash,zsh,fish}"

clean:
	$(CARGO) clean
	rm -rf "$(DIST)"
