# cgdrop: `make` builds, `make test` runs every test tier (root tests need root).
CARGO ?= cargo
PREFIX ?= /usr/local

BINDIR = $(DESTDIR)$(PREFIX)/bin
MANDIR = $(DESTDIR)$(PREFIX)/share/man/man1
BASHDIR = $(DESTDIR)$(PREFIX)/share/bash-completion/completions
ZSHDIR = $(DESTDIR)$(PREFIX)/share/zsh/site-functions
FISHDIR = $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
UNITDIR = $(DESTDIR)$(PREFIX)/lib/systemd/system
BIN = target/release/cgdrop

.PHONY: all build deps test soak fuzz demo bench install uninstall vmlinux fmt lint clean

all: build

deps:
	@scripts/deps.sh

build: deps
	$(CARGO) build --release --locked

# Unit tests, CLI tests and, as root, the end-to-end and BPF_PROG_TEST_RUN
# tests (marked #[ignore = "needs root…"], so a plain `cargo test` without root
# lists them as ignored). The release build is for the `make install` test.
ROOT_TESTS = $(shell [ "$$(id -u)" = 0 ] && echo --include-ignored)
# Afterwards, pass or fail, the bpffs directory that the pinning tests leave
# empty is removed (tests running in parallel cannot remove it safely: one may
# be pinning into it); rmdir leaves one that holds pins.
test: deps
	$(CARGO) build --release --locked
	$(CARGO) test --locked -- --test-threads=$$(nproc) $(ROOT_TESTS); rc=$$?; \
		rmdir /sys/fs/bpf/cgdrop 2>/dev/null; exit $$rc

# The load test at full length (30 s; `make test` runs it for 5 s), root.
soak: deps
	CGDROP_SOAK_SECS=30 $(CARGO) test --locked --test soak -- --nocapture --include-ignored

# The parsers and the BPF packet parser at length (root for the latter).
fuzz: deps
	PROPTEST_CASES=200000 $(CARGO) test --release --locked --test properties
	CGDROP_FUZZ_PACKETS=200000 $(CARGO) test --release --locked --test prog_test_run random_packets -- --include-ignored

# The binary, man page, completions and systemd unit; with CGROUP=… also pins a
# policy (cgdrop pin --cgroup $(CGROUP) --create $(CGDROP_FLAGS)); without it,
# pins the programs under /sys/fs/bpf/cgdrop/progs/ for attaching by hand.
install: build
	install -D -m 0755 $(BIN) $(BINDIR)/cgdrop
	install -d $(MANDIR) $(BASHDIR) $(ZSHDIR) $(FISHDIR) $(UNITDIR)
	$(BIN) manpage --dir $(MANDIR)
	$(BIN) completions bash > $(BASHDIR)/cgdrop
	$(BIN) completions zsh > $(ZSHDIR)/_cgdrop
	$(BIN) completions fish > $(FISHDIR)/cgdrop.fish
	sed 's|@BINDIR@|$(PREFIX)/bin|g' dist/cgdrop@.service > $(UNITDIR)/cgdrop@.service
	sed 's|@BINDIR@|$(PREFIX)/bin|g' dist/cgdrop.service > $(UNITDIR)/cgdrop.service
ifneq ($(CGROUP),)
	$(BINDIR)/cgdrop pin --cgroup $(CGROUP) --create $(CGDROP_FLAGS)
else
	test -e /sys/fs/bpf/cgdrop/progs || $(BINDIR)/cgdrop pin --programs $(CGDROP_FLAGS)
endif

# Unpins everything cgdrop pinned, then removes what install put in place.
uninstall:
	-test ! -x $(BINDIR)/cgdrop || $(BINDIR)/cgdrop unpin --all
	rm -f $(BINDIR)/cgdrop $(MANDIR)/cgdrop.1 $(MANDIR)/cgdrop-*.1 $(BASHDIR)/cgdrop $(ZSHDIR)/_cgdrop $(FISHDIR)/cgdrop.fish $(UNITDIR)/cgdrop@.service $(UNITDIR)/cgdrop.service

# Benchmarks against baselines in the same run (root); writes bench/RESULTS.md.
bench: deps
	scripts/deps.sh bench
	$(CARGO) build --release --locked
	$(CARGO) bench --locked --bench cgdrop -- bench/RESULTS.md

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
