# oomguard: `make demo` shows it, `make test` proves it.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: all deps build release image demo test test-v2-soak test-outage test-soak test-repeat fuzz unit integration lint bench clean critest critest-where

all: build

deps:
	hack/deps.sh runsc docker

build:
	$(CARGO) build --workspace --all-targets

release:
	$(CARGO) build --release -p oomguard-shim

# The installer image: an OCI archive of a static release build, for
# `ctr images import` and `docker load` (target/image/, reproducible).
image:
	hack/image.sh

demo: deps build
	hack/demo.sh

# Unit tests (with a short run of every parser's fuzz test), then
# integration tests against real containerd 1.6/1.7/2.x (the critest lanes
# among them: integration/tests/critest.rs).
test: deps build lint critest-where
	$(CARGO) test --workspace --no-fail-fast -- --test-threads=2

# Says where critest is, or plainly that its lanes will be skipped.
critest-where:
	@hack/critest/setup.sh --where >/dev/null 2>&1 \
		&& echo "critest: $$(hack/critest/setup.sh --where)" \
		|| echo "critest: NOT FOUND (set CRITEST or put cri-tools' critest in ../shared/critest/): the critest lanes are SKIPPED"

# Kubernetes conformance only: critest on containerd 1.7 and 2.x, stock
# handlers beside oomguard's (results in .cache/critest/results-*.md).
critest: deps build critest-where
	$(CARGO) test -p oomguard-integration --test critest -- --test-threads=2 --nocapture

# Every parser of foreign bytes on 100000 generated inputs (optimised, with
# overflow checks on); prints inputs, time and rejections per parser.
FUZZ_CASES ?= 100000
fuzz:
	OOMGUARD_FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --profile fuzz -p oomguard-shim -p oomguard-runtimes fuzz_ -- --nocapture --test-threads=2 2>&1 | tee .cache/fuzz.log | grep -E '^fuzz |inputs in|test result|panicked|FAILED'; exit $${PIPESTATUS[0]}

# create/start/exec/OOM/delete 1000 times with runc and 200 with runsc under
# containerd 1.7; fails if the shim's fds or RSS, mounts, cgroups, runtime
# state or /run/containerd/s sockets grow (figures in .cache/soak/).
test-soak: deps build
	$(CARGO) test -p oomguard-integration --test soak -- --ignored --nocapture --test-threads=1

# The gVisor own-limit tests (CRI and ctr pods, containerd 1.7 and 2.x)
# REPEAT times in a row, stopping at the first failure (.cache/repeat/).
REPEAT ?= 20
test-repeat: deps build
	hack/repeat.sh $(REPEAT)

unit: build
	$(CARGO) test --workspace --bins --lib

# The cgroup v2 lane's init-OOM case 200 times in a qemu VM (Debian's kernel).
test-v2-soak: deps build
	OOMGUARD_V2_SOAK=200 $(CARGO) test -p oomguard-integration --test cgroup_v2 -- --nocapture

# containerd away for 5 minutes (OOMGUARD_OUTAGE_SECS) while its containers
# are OOM-killed: every TaskOOM/TaskExit delivered once it is back (runc on
# 1.7 after SIGKILL, runsc on 2.x after SIGTERM, side by side).
test-outage: deps build
	$(CARGO) test -p oomguard-integration --test restart -- --ignored --nocapture long_outage

# oomguard beside the stock containerd-shim-runc-v2 in the same run (VER=1.7 or 2).
VER ?= 1.7
bench: deps
	hack/bench.sh $(VER)

# The second clippy: no unwrap/expect in what ships (tests may); a panic
# there would fail containerd's call.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p oomguard-shim -p oomguard-runtimes --lib --bins -- -D warnings -D clippy::unwrap_used -D clippy::expect_used

clean:
	$(CARGO) clean

# Debian package target/deb/oomguard_<version>_amd64.deb (release build,
# hack/deb.sh); test-deb installs that package with dpkg, runs it, removes it.
.PHONY: deb test-deb
deb: release
	hack/deps.sh deb
	hack/deb.sh --bin target/release/containerd-shim-oomguard-v2

test-deb: deb
	OOMGUARD_DEB=$$(hack/deb.sh --bin target/release/containerd-shim-oomguard-v2) \
		$(CARGO) test -p oomguard-integration --test deb
