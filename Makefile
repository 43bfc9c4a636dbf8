# quictunnel. `make` builds the binaries into bin/, `make test` is what CI
# runs (.ci/run), `make demo` runs the whole chain on loopback.
#
#   make test PKGS=./internal/service/...   restrict vet, gofmt, tests and fuzzing
#   make fuzz FUZZTIME=5m                    longer fuzzing (default 60s per target)

GO ?= go
export PATH := $(PATH):/usr/local/go/bin
BIN := bin
CERTS := testdata/certs
PKGS ?= ./...
# Directories of PKGS, for gofmt ("./..." is "."; "./x/..." is "./x").
PKGDIRS = $(patsubst %/...,%,$(patsubst ./...,.,$(PKGS)))
FUZZTIME ?= 60s
# The binaries are static (pure-Go DNS resolver, no libc mapped) and carry no
# symbol table or DWARF: about 1.5 MiB less resident memory per process and a
# third smaller. Panics and pprof still name functions. LDFLAGS= for a
# debugger-friendly build.
BUILDFLAGS ?= -trimpath
LDFLAGS ?= -s -w
# What --version prints: stamped here, since a build without VCS stamping
# (-buildvcs=false) would not know its commit.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
STAMP = -X quictunnel/internal/service.version=$(VERSION) -X quictunnel/internal/service.commit=$(COMMIT)
# make install copies the binaries to $(DESTDIR)$(PREFIX)/bin.
PREFIX ?= /usr/local
# make dist builds one release archive per platform into $(DIST).
PLATFORMS ?= linux/amd64 linux/arm64 darwin/amd64 darwin/arm64
DIST ?= dist

.DEFAULT_GOAL := build
# Steps of a target run one after another even under make -j.
.NOTPARALLEL:
.PHONY: build install dist dist-check test deps demo-deps vet fmt-check race aborted fuzz-smoke fuzz cross demo bench bench-smoke certs clean

build:
	CGO_ENABLED=0 $(GO) build $(BUILDFLAGS) -ldflags="$(LDFLAGS) $(STAMP)" -o $(BIN)/ ./cmd/...

install: build
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(BIN)/coordinator $(BIN)/localproxy $(BIN)/reporter $(BIN)/demoapp $(DESTDIR)$(PREFIX)/bin/

# Reproducible release archives (scripts/dist.sh): per platform the three
# services, README, LICENSE if any and contrib/, plus SHA256SUMS.
dist:
	@VERSION=$(VERSION) COMMIT=$(COMMIT) scripts/dist.sh -o $(DIST) $(PLATFORMS)

# Builds the archives twice (the second from a copy of the tree elsewhere,
# with an empty build cache) and fails unless the bytes are the same; also
# checks what the archives hold. All four platforms take several minutes on
# two cores; CI checks linux/amd64 (PLATFORMS=linux/amd64, about 2 minutes).
dist-check:
	@VERSION=$(VERSION) COMMIT=$(COMMIT) scripts/dist.sh -check $(PLATFORMS)

# The steps run in order (not as prerequisites, which make -j would start
# together).
test:
	@scripts/test-deps.sh
	@$(MAKE) --no-print-directory vet fmt-check race aborted fuzz-smoke

deps:
	@scripts/test-deps.sh

vet:
	$(GO) vet $(PKGS)

fmt-check:
	@out=$$(gofmt -l $(PKGDIRS)); \
	if [ -n "$$out" ]; then echo "gofmt: these files need formatting (gofmt -w):"; echo "$$out"; exit 1; fi

race:
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

# The aborted-upload tests at full size (10,000 requests each way), which
# the race detector's slowdown cuts to 1,000 in the race step.
aborted:
	$(GO) test -count=1 -run 'TestAbortedUploads' ./e2e/

# Every Fuzz target (found by grep, so new ones are picked up) for 5s each.
fuzz-smoke:
	@scripts/fuzz.sh 5s $(PKGS)

fuzz:
	@scripts/fuzz.sh $(FUZZTIME) $(PKGS)

cross:
	GOOS=darwin GOARCH=arm64 $(GO) build -o /dev/null ./cmd/...
	GOOS=darwin GOARCH=amd64 $(GO) build -o /dev/null ./cmd/...
	GOOS=linux GOARCH=arm64 $(GO) build -o /dev/null ./cmd/...

# Only what scripts/demo.sh uses (curl, ss, openssl), not the test tools.
demo-deps:
	@scripts/test-deps.sh --demo

demo: demo-deps build $(CERTS)/coordinator.pem
	@scripts/demo.sh

bench: build
	@scripts/test-deps.sh --bench
	@scripts/bench.sh

# Every benchmark of make bench, tiny and with nothing written: checks the
# driver, the relays and the report still work (about a minute). CI runs it.
bench-smoke: build
	@scripts/test-deps.sh --bench
	@scripts/bench.sh -bulk-mib 8 -load 200ms -setups 20 -sessions 200 -hold 1s -rounds 1 -profile 1s -out "" >/dev/null
	@echo "bench-smoke: every benchmark ran"

# Regenerate the throwaway test certificates (they are committed).
certs:
	scripts/gen-certs.sh $(CERTS)

$(CERTS)/coordinator.pem:
	scripts/gen-certs.sh $(CERTS)

clean:
	rm -rf $(BIN) $(DIST)
