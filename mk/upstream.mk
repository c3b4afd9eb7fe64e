# Flux's own source-controller, the baseline of the bench's helmindex phase.
#
# Include from the top-level Makefile (`include mk/upstream.mk`). Paths are
# anchored at the repository root found from this file's location.
#
# Targets:
#   upstream-bin   bin/flux-source-controller, Flux's source-controller
#                  v1.7.0 built from the Go module proxy (hack/upstream/)
#
# Same conventions as mk/minio.mk: a plain file target, built once and
# rebuilt only when the module's pin changes.

UPSTREAM_ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))/..)
UPSTREAM_BIN := $(UPSTREAM_ROOT)/bin/flux-source-controller
UPSTREAM_GO := GOWORK=off GOFLAGS='-mod=mod -buildvcs=false' CGO_ENABLED=0 go

.PHONY: upstream-bin

upstream-bin: $(UPSTREAM_BIN)

$(UPSTREAM_BIN): $(UPSTREAM_ROOT)/hack/upstream/go.mod $(UPSTREAM_ROOT)/hack/upstream/go.sum
	@mkdir -p $(@D)
	cd $(UPSTREAM_ROOT)/hack/upstream && $(UPSTREAM_GO) build -trimpath -ldflags='-s -w' -o $@.tmp github.com/fluxcd/source-controller
	mv $@.tmp $@
