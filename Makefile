# quictunnel: `make demo` runs everything on loopback, `make test` runs the tests.
GO ?= go
export PATH := $(PATH):/usr/local/go/bin
BIN := bin
PKGS := ./...
FUZZTIME ?= 5s

.PHONY: build test vet fmt-check race fuzz fuzz-smoke cross demo bench certs deps clean

build:
	$(GO) build -o $(BIN)/ ./cmd/...

deps:
	@scripts/test-deps.sh

test: deps vet fmt-check race fuzz-smoke

vet:
	$(GO) vet $(PKGS)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

race:
	$(GO) test -race -timeout 15m $(PKGS)

# Every Fuzz target in the tree, briefly (make fuzz runs them longer).
fuzz-smoke:
	@scripts/fuzz.sh $(FUZZTIME)

fuzz:
	@scripts/fuzz.sh 60s

cross:
	GOOS=darwin GOARCH=arm64 $(GO) build -o /dev/null ./cmd/...
	GOOS=darwin GOARCH=amd64 $(GO) build -o /dev/null ./cmd/...
	GOOS=linux GOARCH=arm64 $(GO) build -o /dev/null ./cmd/...

demo: build testdata/certs/coordinator.pem
	@scripts/demo.sh

bench: build
	@scripts/bench.sh

certs:
	scripts/gen-certs.sh testdata/certs

testdata/certs/coordinator.pem:
	scripts/gen-certs.sh testdata/certs

clean:
	rm -rf $(BIN)
