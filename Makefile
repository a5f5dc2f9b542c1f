# guardian — see README.md.
GO       ?= go
FUZZTIME ?= 30s
DEMO_DIR ?= .demo

# Every fuzz target, as package:Target.
FUZZ_TARGETS = \
	./revoke:FuzzParseKey \
	./cmd/guardian:FuzzParseCerts \
	./cmd/guardian:FuzzRevokeRequest \
	./cmd/guardian:FuzzParseConfig \
	./listener:FuzzHandshakeBytes

.PHONY: all build demo test lint fuzz bench bench-pkg clean

all: lint test

build:
	$(GO) build -o bin/guardian ./cmd/guardian

## demo: guardian on its embedded default: a fresh PKI in .demo/, mTLS on 127.0.0.1:8443,
## the admin API on 127.0.0.1:9443, and the commands to try printed. No Redis needed.
demo: build
	./bin/guardian demo --dir $(DEMO_DIR)

## test: vet, formatting, and every test under the race detector in random order.
test: lint
	$(GO) test -race -shuffle=on -count=1 -timeout 5m ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt: not formatted:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

## fuzz: each fuzz target for FUZZTIME (default 30s).
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; name=$${t##*:}; \
	  echo "== $$name ($$pkg, $(FUZZTIME))"; \
	  $(GO) test -run XXX -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg; \
	done

## bench: the harness (own redis-server, clients in another process); figures in
## bench-results/latest.json. BENCH_FLAGS=-quick for a run of under a minute.
bench:
	@mkdir -p bench-results
	$(GO) run ./bench -json bench-results/latest.json $(BENCH_FLAGS)

## bench-pkg: the in-package benchmarks (Set lookup, registry, listener, Redis feed).
bench-pkg:
	$(GO) test -run XXX -bench . -benchmem -count 1 ./revoke ./conntrack ./listener ./revoke/redisfeed

clean:
	rm -rf bin $(DEMO_DIR)
