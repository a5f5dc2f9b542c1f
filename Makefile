# guardian — see README.md.
GO       ?= go
FUZZTIME ?= 30s
DEMO_DIR ?= .demo

# The modules: the library, and beside it the ones whose dependencies the library's go.mod
# does not carry (the bench harness's plot library, grpc-go).
MODULES = . bench listener/grpccreds

# Every fuzz target, as package:Target.
FUZZ_TARGETS = \
	./revoke:FuzzParseKey \
	./revoke/redisfeed:FuzzParseRecord \
	./revoke/crl:FuzzParseCRL \
	./revoke/ocsp:FuzzVerify \
	./internal/pemfile:FuzzParseCerts \
	./daemon/admin:FuzzRevokeRequest \
	./daemon:FuzzParseConfig \
	./daemon:FuzzPathReadings \
	./internal/clip:FuzzString \
	./binding:FuzzTokens \
	./binding:FuzzSessionCookie \
	./binding:FuzzSplitCookies \
	./binding:FuzzParseKey \
	./listener:FuzzHandshakeBytes \
	./listener:FuzzParsePolicy

.PHONY: all build demo setup test lint fuzz bench bench-peers bench-pkg soak soak-short clean

all: lint test

build:
	$(GO) build -o bin/guardian ./cmd/guardian

## demo: guardian on its embedded default: a fresh PKI in .demo/, mTLS on 127.0.0.1:8443,
## the admin API on 127.0.0.1:9443, and the commands to try printed. No Redis needed.
demo: build
	./bin/guardian demo --dir $(DEMO_DIR)

## setup: what the tests need beside Go, make and git — a C compiler for -race, redis-server,
## redis-cli, openssl, curl, python3 — installed with apt-get when run as root, else named.
setup:
	@bash scripts/setup.sh

## test: vet, formatting, and every test of every module under the race detector in random
## order; no test skips for want of a tool (setup brings them).
test: setup lint
	@set -e; for m in $(MODULES); do echo "== go test ($$m)"; (cd $$m && $(GO) test -race -shuffle=on -count=1 -timeout 5m ./...); done

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt: not formatted:"; echo "$$out"; exit 1; fi
	@set -e; for m in $(MODULES); do (cd $$m && $(GO) vet ./... && \
	  if ! $(GO) mod tidy -diff >/dev/null; then echo "go mod tidy would change $$m/go.mod or go.sum:"; $(GO) mod tidy -diff; exit 1; fi); done

## fuzz: each fuzz target for FUZZTIME (default 30s); scripts/fuzz.sh says how a failure is judged.
fuzz:
	@bash scripts/fuzz.sh $(FUZZTIME) $(FUZZ_TARGETS)

## bench: the harness (own redis-server, clients in another process); figures in
## bench-results/latest.json, latency distributions in bench-results/latency.png.
## BENCH_FLAGS=-quick for a run of under a minute. The peers scenario runs nginx and HAProxy
## when they are on PATH: bench-peers installs them first.
bench:
	@mkdir -p bench-results
	cd bench && $(GO) run . -json $(CURDIR)/bench-results/latest.json -plot $(CURDIR)/bench-results/latency.png $(BENCH_FLAGS)

## soak: 15,000 live conns from another process for 5 minutes under churn, revocations and
## unrevocations arriving through Redis, a CRL URL and OCSP while Redis is partitioned, slowed
## and killed and the CRL URL and OCSP responder hang, fail and serve garbage; fails unless
## exactly the revoked conns closed, the node has every Redis change, and the server returned
## to its baseline. soak-short: the same for 30 seconds (CI runs it).
## SOAK_FLAGS=-soak-faults=false: the load without the faults.
soak:
	cd bench && $(GO) run . -scenarios soak -denylist 0 $(SOAK_FLAGS)

soak-short: setup
	cd bench && $(GO) run . -scenarios soak -denylist 0 -soak-duration 30s $(SOAK_FLAGS)

## bench-peers: install nginx and HAProxy (Debian packages) if missing, then run the peers
## scenario: what each does with a revoked certificate's live conn, beside guardian.
bench-peers:
	@need=""; command -v nginx >/dev/null || need="$$need nginx"; command -v haproxy >/dev/null || need="$$need haproxy"; \
	  if [ -n "$$need" ]; then echo "installing:$$need"; \
	    if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null; \
	    else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null; fi; fi
	@mkdir -p bench-results
	cd bench && $(GO) run . -scenarios peers -json $(CURDIR)/bench-results/peers.json $(BENCH_FLAGS)

## bench-pkg: the in-package benchmarks (Set lookup, registry, listener, Redis feed).
bench-pkg:
	$(GO) test -run XXX -bench . -benchmem -count 1 ./revoke ./conntrack ./listener ./revoke/redisfeed

clean:
	rm -rf bin $(DEMO_DIR)
