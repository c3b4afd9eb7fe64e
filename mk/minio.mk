# The MinIO server the Bucket reconciler's integration tests run against.
#
# Include from the top-level Makefile (`include mk/minio.mk`). Paths are
# anchored at the repository root found from this file's location, so the
# fragment works whatever directory make was started in.
#
# Targets:
#   minio-bin   bin/minio, a real S3 server built from the Go module proxy
#
# Release binaries cannot be downloaded on the build machines, so MinIO is
# compiled from source in the throwaway module hack/minio/, pinned there to
# one MinIO commit. It is a plain file target: built once, rebuilt only when
# that module's pin changes. test/reconcile starts it on loopback and fails,
# naming this target, when it is missing.

MINIO_ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))/..)
MINIO_BIN := $(MINIO_ROOT)/bin/minio

# Same conventions as mk/envtest.mk: -mod=mod completes go.sum on a fresh
# machine, GOWORK=off ignores a developer's go.work, -buildvcs=false because
# this is not sourceraft's code, CGO_ENABLED=0 as MinIO's release builds.
MINIO_GO := GOWORK=off GOFLAGS='-mod=mod -buildvcs=false' CGO_ENABLED=0 go

.PHONY: minio-bin

minio-bin: $(MINIO_BIN)

$(MINIO_BIN): $(MINIO_ROOT)/hack/minio/go.mod $(MINIO_ROOT)/hack/minio/go.sum
	@mkdir -p $(@D)
	cd $(MINIO_ROOT)/hack/minio && $(MINIO_GO) build -trimpath -ldflags='-s -w' -o $@.tmp github.com/minio/minio
	mv $@.tmp $@
