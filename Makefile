# oomguard: `make demo` shows it, `make test` proves it.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: all deps build release demo test test-v2-soak test-outage unit integration lint bench clean

all: build

deps:
	hack/deps.sh runsc docker

build:
	$(CARGO) build --workspace --all-targets

release:
	$(CARGO) build --release -p oomguard-shim

demo: deps build
	hack/demo.sh

# Unit tests, then integration tests against real containerd 1.6/1.7/2.x.
test: deps build lint
	$(CARGO) test --workspace --no-fail-fast -- --test-threads=2

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

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
