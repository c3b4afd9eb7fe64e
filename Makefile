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
include mk/image.mk
include mk/flux.mk
include mk/upstream.mk

build:
	$(GO) build -o $(BIN)/source-controller ./cmd/source-controller
	$(GO) build -o $(BIN)/devcluster ./cmd/devcluster

run: build envtest-bins
	$(BIN)/devcluster -binary $(BIN)/source-controller -flux $(FLUX_CLI) -dir .run -replicas 3

test: build lint envtest-bins test-unit fuzz-short image-test test-e2e test-fluxcli chaos-short chaos-s3-short

# internal/cluster's partition test, test/e2e's disk-full test and the chaos
# suite run replicas in network namespaces (ip from iproute2) and on tmpfs
# mounts, as root. Where ip or tc is missing and the machine allows it (root
# with apt-get), iproute2 is installed; otherwise this names what is missing.
.PHONY: host-tools
host-tools:
	@[ "$$(id -u)" = 0 ] || { echo 'host-tools: the partition, disk-full and chaos tests create network namespaces and mount tmpfs: run as root' >&2; exit 1; }
	@if ! command -v ip >/dev/null || ! command -v tc >/dev/null; then \
		command -v apt-get >/dev/null || { echo 'host-tools: ip and tc (iproute2) are missing and there is no apt-get to install them' >&2; exit 1; }; \
		echo 'host-tools: installing iproute2 (ip, tc)'; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null || { echo 'host-tools: apt-get install iproute2 failed' >&2; exit 1; }; \
	fi
	@command -v mount >/dev/null && command -v umount >/dev/null || { echo 'host-tools: mount and umount (util-linux) are missing' >&2; exit 1; }
	@d=$$(mktemp -d) && { mount -t tmpfs -o size=1m tmpfs "$$d" && umount "$$d"; rc=$$?; rmdir "$$d"; [ $$rc = 0 ]; } || { echo 'host-tools: cannot mount a tmpfs here (no CAP_SYS_ADMIN?)' >&2; exit 1; }

test-unit: host-tools $(MINIO_BIN)
	$(GO) test -race -count=1 -timeout 15m $(RACE_PKGS)
	$(GO) test -count=1 -timeout 10m $$($(GO) list ./... | grep -v -e /fsm -e /raftstore -e /httpapi -e /test/e2e -e /test/bench -e /test/fluxcli -e /test/soak)

test-e2e: build envtest-bins host-tools $(MINIO_BIN)
	SOURCERAFT_BIN=$(BIN)/source-controller $(GO) test -count=1 -timeout 20m -v ./test/e2e/... 2>&1 | tee e2e.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic|\s+\S+_test.go)' ; exit $${PIPESTATUS[0]}

# The chaos suite (test/chaos): kills, pauses, partitions, disk full, rolling
# restarts and (3 replicas) a 3 → 5 → 3 scale under
# load for CHAOS_DURATION per cluster size (3 and 5 replicas), then checks
# the invariants; the summary lines close the output (full log: bin/chaos.log).
# chaos-short is a 60 s round of the 3-replica cluster that `make test` runs;
# chaos-s3-short (also in `make test`) the same round with the blob bytes in
# a MinIO bucket (CHAOS_BACKEND=s3; log: bin/chaos-s3.log). CHAOS_BACKEND=s3
# works with `make chaos` too.
CHAOS_DURATION ?= 3m
CHAOS_BACKEND ?= raft
.PHONY: chaos chaos-short chaos-s3-short
chaos chaos-short chaos-s3-short: build envtest-bins host-tools $(MINIO_BIN)
	set -o pipefail; log=$(BIN)/$(if $(filter chaos-s3-short,$@),chaos-s3,chaos).log; \
		SOURCERAFT_BIN=$(BIN)/source-controller CHAOS_DURATION=$(if $(filter chaos,$@),$(CHAOS_DURATION),60s) \
		CHAOS_BACKEND=$(if $(filter chaos-s3-short,$@),s3,$(CHAOS_BACKEND)) \
		$(GO) test -count=1 -timeout $${CHAOS_TIMEOUT:-90m} -v ./test/chaos/ -run '$(if $(filter chaos,$@),.,TestChaos3Replicas$$)' 2>&1 | tee $$log; \
		rc=$$?; grep -hE '^(availability:|failover:|minority:|checked:|chaos:|chaos dump:)' $$log; exit $$rc

# Go's native fuzzing of every parser of untrusted input; the seed corpora
# are checked in under each package's testdata/fuzz. fuzz-short (in `make
# test`) runs each target for a few seconds, `make fuzz` for FUZZTIME each,
# FUZZ_JOBS of them at once (hack/fuzz.sh).
FUZZ_TARGETS := ./storage:FuzzParsePath ./httpapi:FuzzArtifactPath ./httpapi:FuzzRange \
	./httpapi:FuzzRegisterPeer ./archive:FuzzIgnorePatterns ./fsm:FuzzDecode ./fsm:FuzzRestore \
	./sources/oci:FuzzExtractLayer ./sources/bucket:FuzzObjectPath ./sources/helm:FuzzLoadIndex \
	./sources/helm:FuzzChartArchive
FUZZTIME ?= 10m
FUZZ_JOBS ?= 1
.PHONY: fuzz fuzz-short
fuzz fuzz-short:
	GO=$(GO) FUZZ_JOBS=$(if $(filter fuzz-short,$@),1,$(FUZZ_JOBS)) hack/fuzz.sh $(if $(filter fuzz-short,$@),5s,$(FUZZTIME)) $(FUZZ_TARGETS)

# The soak (test/soak, not part of `make test`): 3 replicas reconciling and
# serving under steady load for SOAK_DURATION; fails on goroutine, fd, heap
# or RSS growth after warm-up, or on any failed download.
SOAK_DURATION ?= 30m
.PHONY: soak
soak: build envtest-bins
	SOURCERAFT_BIN=$(BIN)/source-controller SOAK_DURATION=$(SOAK_DURATION) \
		$(GO) test -count=1 -timeout $${SOAK_TIMEOUT:-3h} -v ./test/soak/ 2>&1 | tee $(BIN)/soak.log; exit $${PIPESTATUS[0]}

# The helmindex phase reconciles HelmRepositories against envtest and
# measures Flux's own source-controller beside sourceraft.
bench: build envtest-bins $(UPSTREAM_BIN) $(MINIO_BIN)
	SOURCERAFT_BIN=$(BIN)/source-controller UPSTREAM_SOURCE_CONTROLLER=$(UPSTREAM_BIN) BENCH_OUT=$${BENCH_OUT:-bench-results.json} $(GO) run ./test/bench

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt needed'; exit 1; }
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

STATICCHECK_VERSION ?= v0.8.2

fmt:
	gofmt -w $$(git ls-files '*.go')

# deploy/statefulset/crds is a copy of api/crds with its kustomization
# (kustomize loads no file outside a kustomization's root); test/deploy fails
# while the copy differs, so run this after `make crds`.
.PHONY: deploy-crds
deploy-crds:
	rm -rf deploy/statefulset/crds && mkdir -p deploy/statefulset/crds
	cp api/crds/*.yaml deploy/statefulset/crds/
	cd deploy/statefulset/crds && { printf '# Generated by make deploy-crds from api/crds; do not edit.\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n'; \
		for f in *.yaml; do printf -- '- %s\n' "$$f"; done; } > kustomization.yaml.tmp && mv kustomization.yaml.tmp kustomization.yaml
