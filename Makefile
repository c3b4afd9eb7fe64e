# sourceraft: `make run` starts a local replicated cluster, `make test` runs the tests.
SHELL := /bin/bash
GO ?= go
export GOTOOLCHAIN := local
BIN := $(CURDIR)/bin
# Packages whose concurrency matters run under the race detector.
RACE_PKGS := ./fsm/... ./raftstore/... ./httpapi/...

.PHONY: build run test test-unit test-e2e bench lint fmt

include mk/envtest.mk
include mk/minio.mk

build:
	$(GO) build -o $(BIN)/source-controller ./cmd/source-controller
	$(GO) build -o $(BIN)/devcluster ./cmd/devcluster

run: build envtest-bins
	$(BIN)/devcluster -binary $(BIN)/source-controller -dir .run -replicas 3

test: build lint envtest-bins test-unit test-e2e

test-unit: $(MINIO_BIN)
	$(GO) test -race -count=1 -timeout 15m $(RACE_PKGS)
	$(GO) test -count=1 -timeout 10m $$($(GO) list ./... | grep -v -e /fsm -e /raftstore -e /httpapi -e /test/e2e -e /test/bench)

test-e2e: build envtest-bins
	SOURCERAFT_BIN=$(BIN)/source-controller $(GO) test -count=1 -timeout 20m -v ./test/e2e/... 2>&1 | tee e2e.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic|\s+\S+_test.go)' ; exit $${PIPESTATUS[0]}

bench: build
	SOURCERAFT_BIN=$(BIN)/source-controller BENCH_OUT=$${BENCH_OUT:-bench-results.json} $(GO) run ./test/bench

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt needed'; exit 1; }
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

STATICCHECK_VERSION ?= v0.8.2

fmt:
	gofmt -w $$(git ls-files '*.go')
