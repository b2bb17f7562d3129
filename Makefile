# oomguard: `make demo` shows it, `make test` proves it.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: all deps build release demo test test-v2-soak test-soak fuzz unit integration lint bench clean

all: build

deps:
	hack/deps.sh runsc docker

build:
	$(CARGO) build --workspace --all-targets

release:
	$(CARGO) build --release -p oomguard-shim

demo: deps build
	hack/demo.sh

# Unit tests (with a short run of every parser's fuzz test), then
# integration tests against real containerd 1.6/1.7/2.x.
test: deps build lint
	$(CARGO) test --workspace --no-fail-fast -- --test-threads=2

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

unit: build
	$(CARGO) test --workspace --bins --lib

# The cgroup v2 lane's init-OOM case 200 times in a qemu VM (Debian's kernel).
test-v2-soak: deps build
	OOMGUARD_V2_SOAK=200 $(CARGO) test -p oomguard-integration --test cgroup_v2 -- --nocapture

# oomguard beside the stock containerd-shim-runc-v2 in the same run (VER=1.7 or 2).
VER ?= 1.7
bench: deps
	hack/bench.sh $(VER)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
