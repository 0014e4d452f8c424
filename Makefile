# gst-vmem. `make test` is THE test command: on a fresh Debian 12 machine (as root) it installs
# what is missing, builds, runs the host tests and the VM suite on GStreamer 1.22, 1.26 and 1.28.

USERLANDS ?= 1.22 1.26 1.28
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build setup lint host-test vm-tests vm-test test clean

all: build

setup:
	tests/vm/setup all

build:
	$(CARGO) build --release

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

host-test:
	$(CARGO) test

# Test binaries for the guest: built on the host, listed for tests/vm/suite.
vm-tests: build
	$(CARGO) test --no-run --message-format=json \
	  | python3 -c 'import json,sys; [print(m["executable"]) for m in map(json.loads, sys.stdin) if m.get("reason")=="compiler-artifact" and m.get("executable") and m["profile"]["test"]]' \
	  > target/vm-tests.list

vm-test: vm-tests
	tests/vm/check-all $(USERLANDS)

test:
	tests/vm/setup host
	$(MAKE) lint host-test vm-tests
	tests/vm/setup all
	tests/vm/check-all $(USERLANDS)

clean:
	$(CARGO) clean
