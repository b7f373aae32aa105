# llmcanary — run `make help` for the targets. Plain `go test` underneath.
SHELL := /bin/bash
export PATH := $(CURDIR)/.tools/venv/bin:$(CURDIR)/bin:$(PATH)
export LLMCANARY_WASM ?= $(CURDIR)/bin/llmcanary-filter.wasm

GO      ?= go
PKGS    := ./...
E2E     := ./test/e2e/...
# Tests that start a real ClickHouse or Envoy carry this build tag; without
# it `go test ./...` is the fast tier and needs neither.
TAGS    := integration
# The integration tier's packages, listed with the tag: a package whose test
# files all carry it (deploy/grafana, test/modernch) has no Go files without
# it and would be left out. End to end and the benchmarks have targets of
# their own.
INTEGRATION = $$($(GO) list -tags $(TAGS) $(PKGS) | grep -v -e /test/e2e -e /test/bench)

.PHONY: help deps build wasm test test-unit test-integration test-e2e bench soak demo fmt vet clean

help: ## list the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-z0-9-]+:.*## /{printf "  %-17s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## install what is missing: Envoy and chDB (PyPI), ClickHouse and Chromium (Debian), Go modules
	@./deploy/deps.sh

build: ## build bin/llmcanary and the wasm filter
	$(GO) build -o bin/llmcanary ./cmd/llmcanary
	@$(MAKE) --no-print-directory wasm

wasm: ## build the proxy-wasm filter (upstream Go, wasip1 reactor)
	@if [ -d wasm/cmd/filter ]; then \
	  GOOS=wasip1 GOARCH=wasm $(GO) build -buildmode=c-shared -o bin/llmcanary-filter.wasm ./wasm/cmd/filter; \
	fi

test: deps build ## install, build, then run every tier: unit, integration (real ClickHouse and Envoy), end to end (whole e2e log in bin/e2e.log)
	$(GO) vet -tags $(TAGS) $(PKGS)
	$(GO) test -count=1 -tags $(TAGS) $(INTEGRATION)
	$(GO) test -count=1 -p 1 -v -tags $(TAGS) -timeout 25m $(E2E) 2>&1 | tee bin/e2e.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic|\s+\S+_test.go)' ; exit $${PIPESTATUS[0]}

test-unit: ## the fast tier: unit tests and loopback gRPC/HTTP tests, no Envoy or ClickHouse needed (-short: the rule simulation shortened)
	$(GO) test -count=1 -short $(PKGS)

test-integration: deps build ## each package's tests against a real ClickHouse and Envoy (tag integration), without end to end
	$(GO) test -count=1 -tags $(TAGS) $(INTEGRATION)

test-e2e: deps build ## end-to-end tests: the whole stack with real Envoy and ClickHouse
	$(GO) test -count=1 -p 1 -v -tags $(TAGS) -timeout 25m $(E2E)

bench: deps build ## measure the gateway's cost per process and configuration, xDS propagation (one control plane, and replicas on etcd), filter and ext_proc cost, ClickHouse rates (LLMCANARY_BENCH_SCALE=0.2: shorter gateway phases)
	LLMCANARY_BIN=$(CURDIR)/bin/llmcanary $(GO) test -tags $(TAGS) -run '^$$' -bench . -benchtime 1x -timeout 60m ./test/bench/ ./wasm/envoytest/ ./extproc/ ./extproc/envoytest/ ./extproc/chwriter/ ./analyzer/chsource/ ./analyzer/ ./xds/
	$(GO) test -run '^$$' -bench . ./analyzer/stats/ ./sim/

soak: deps build ## run the whole stack for 10 minutes at 50 streamed req/s with a rollout advancing; memory per process and lost rows (LLMCANARY_SOAK_DURATION, LLMCANARY_SOAK_RATE)
	$(GO) test -tags $(TAGS) -run '^$$' -bench BenchmarkSoak -benchtime 1x -timeout 40m ./test/e2e/

demo: deps build ## run a real local rollout with Envoy, ClickHouse and the simulated pool
	./bin/llmcanary demo

fmt: ## format the Go code
	gofmt -w $$(git ls-files '*.go')

vet: ## go vet, every tier's files
	$(GO) vet -tags $(TAGS) $(PKGS)

clean: ## remove build outputs (keeps .tools)
	rm -rf bin
