# cgdrop: `make` builds, `make test` runs every test tier (root tests need root).
CARGO ?= cargo
PREFIX ?= /usr/local

.PHONY: all build deps test demo vmlinux fmt lint clean

all: build

deps:
	@scripts/deps.sh

build: deps
	$(CARGO) build --release --locked

# Unit tests, CLI tests and, as root, the end-to-end and BPF_PROG_TEST_RUN tests.
test: deps
	$(CARGO) build --locked
	$(CARGO) test --locked -- --test-threads=$$(nproc)

# The README's example: a local server, a request blocked by cgdrop (root).
demo: build
	scripts/demo.sh

# Regenerates include/vmlinux.h from this kernel's BTF.
vmlinux:
	scripts/gen-vmlinux.sh

fmt:
	$(CARGO) fmt

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

clean:
	$(CARGO) clean
