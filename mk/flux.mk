# The Flux CLI, built from the Go module proxy, that test/fluxcli runs
# against a sourceraft cluster (and that `make run` tells you to use).
#
# Include from the top-level Makefile (`include mk/flux.mk`). Paths are
# anchored at the repository root found from this file's location, so the
# fragment works whatever directory make was started in.
#
# Targets:
#   flux-cli      bin/flux, the Flux CLI at the version hack/flux/go.mod pins
#   test-fluxcli  build it and run test/fluxcli: the CLI's commands against a
#                 3-replica cluster on the envtest API server
#
# Release binaries cannot be downloaded on the build machines, so the CLI is
# compiled in the throwaway module hack/flux. Its module zip lacks the
# generated cmd/flux/manifests/*.yaml that go:embed wants: the module is
# copied from the module cache (`go mod download -json` names its Dir) to
# bin/flux2-src, never committed, where a placeholder manifest is added, and
# hack/flux/go.mod replaces the module with that copy. The placeholder serves
# every command except install and bootstrap, which need the real manifests.
# bin/flux is a plain file target: built once, rebuilt only when the pin in
# hack/flux changes. The first build takes a few minutes.

FLUX_ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))/..)
FLUX_CLI := $(FLUX_ROOT)/bin/flux
FLUX_SRC := $(FLUX_ROOT)/bin/flux2-src
FLUX_MODULE := github.com/fluxcd/flux2/v2

# Same conventions as mk/envtest.mk: -mod=mod completes go.sum on a fresh
# machine, GOWORK=off ignores a developer's go.work, -buildvcs=false because
# this is not sourceraft's code, CGO_ENABLED=0 as Flux's release builds.
FLUX_GO := GOWORK=off GOFLAGS='-mod=mod -buildvcs=false' CGO_ENABLED=0 go

.PHONY: flux-cli test-fluxcli

flux-cli: $(FLUX_CLI)

# The version is the one hack/flux/go.mod requires; main.VERSION is what
# Flux's release build stamps (`flux version --client` prints it).
$(FLUX_CLI): $(FLUX_ROOT)/hack/flux/go.mod $(FLUX_ROOT)/hack/flux/go.sum
	@mkdir -p $(@D)
	set -e; cd $(FLUX_ROOT)/hack/flux; \
	v=$$(awk '{ for (i = 1; i < NF; i++) if ($$i == "$(FLUX_MODULE)" && $$(i+1) ~ /^v/) { print $$(i+1); exit } }' go.mod); \
	test -n "$$v" || { echo "no $(FLUX_MODULE) requirement in hack/flux/go.mod"; exit 1; }; \
	dir=$$($(FLUX_GO) mod download -json $(FLUX_MODULE)@$$v | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p'); \
	test -d "$$dir" || { echo "go mod download $(FLUX_MODULE)@$$v named no module directory"; exit 1; }; \
	rm -rf $(FLUX_SRC); cp -R "$$dir" $(FLUX_SRC); chmod -R u+w $(FLUX_SRC); \
	mkdir -p $(FLUX_SRC)/cmd/flux/manifests; \
	printf '# Placeholder: the module zip has no generated manifests; flux install and bootstrap need them.\n' \
		> $(FLUX_SRC)/cmd/flux/manifests/placeholder.yaml; \
	$(FLUX_GO) build -trimpath -ldflags="-s -w -X main.VERSION=$${v#v}" -o $@.tmp $(FLUX_MODULE)/cmd/flux
	mv $@.tmp $@

test-fluxcli: build envtest-bins $(FLUX_CLI)
	cd $(FLUX_ROOT) && SOURCERAFT_BIN=$(FLUX_ROOT)/bin/source-controller FLUX_BIN=$(FLUX_CLI) \
		go test -count=1 -timeout 15m -v ./test/fluxcli/
