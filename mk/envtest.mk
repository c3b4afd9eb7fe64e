# Kubernetes test assets and generated CRDs.
#
# Include from the top-level Makefile (`include mk/envtest.mk`). Every path
# here is anchored at the repository root found from this file's location,
# so the fragment works whatever directory make was started in.
#
# Targets:
#   envtest-bins   bin/k8s/kube-apiserver and bin/k8s/etcd for envtest
#   crds           regenerate api/crds/*.yaml from the Flux API types, with
#                  Flux's CRD labels (hack/crdlabels)
#   verify-crds    fail if api/crds/ differs from a fresh generation
#
# Nothing but the Go module proxy can be reached from the build machines, so
# the envtest binaries are compiled from source in throwaway modules under
# hack/envtest/ rather than downloaded as release tarballs. They are plain
# file targets: built once, rebuilt only when a pin in those modules changes.

ENVTEST_ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))/..)
ENVTEST_BIN_DIR := $(ENVTEST_ROOT)/bin/k8s
KUBE_APISERVER_BIN := $(ENVTEST_BIN_DIR)/kube-apiserver
ETCD_BIN := $(ENVTEST_BIN_DIR)/etcd
CONTROLLER_GEN := $(ENVTEST_ROOT)/bin/controller-gen

# -mod=mod lets a fresh machine complete go.sum on its own instead of failing;
# GOWORK=off keeps a developer's go.work from changing what gets built;
# -buildvcs=false because these binaries are not sourceraft's own code;
# CGO_ENABLED=0 as in Kubernetes' and etcd's release builds (static, no gcc).
ENVTEST_GO := GOWORK=off GOFLAGS='-mod=mod -buildvcs=false' CGO_ENABLED=0 go
ENVTEST_GOBUILD := $(ENVTEST_GO) build -trimpath

# Flux's CRDs are generated with crdVersions=v1 from the v1 package only: in
# the pinned API module v1beta2 and older are marked skipversion (no longer
# served), and v1 carries +kubebuilder:storageversion.
CRD_PACKAGES := github.com/fluxcd/source-controller/api/v1
CRD_OPTIONS := crd:crdVersions=v1
# What Flux's install labels its CRDs with and the Flux CLI selects by (flux
# check lists the CRDs part-of flux; flux uninstall deletes them). Generation
# cannot add them (controller-gen reads labels only from markers on the API
# types, which are Flux's), so hack/crdlabels adds them to controller-gen's
# output, in `crds` and in `verify-crds` alike.
CRD_LABELS := app.kubernetes.io/part-of=flux app.kubernetes.io/component=source-controller
CRD_LABEL := cd $(ENVTEST_ROOT) && GOWORK=off go run ./hack/crdlabels

.PHONY: envtest-bins crds verify-crds

envtest-bins: $(KUBE_APISERVER_BIN) $(ETCD_BIN)

# The version stamp mirrors what Kubernetes' release build sets, so /version
# reports the real release instead of v0.0.0-master; it is read from the
# module's own go.mod to keep one source of truth.
$(KUBE_APISERVER_BIN): $(ENVTEST_ROOT)/hack/envtest/kube-apiserver/go.mod $(ENVTEST_ROOT)/hack/envtest/kube-apiserver/go.sum
	@mkdir -p $(@D)
	cd $(ENVTEST_ROOT)/hack/envtest/kube-apiserver && \
	v=$$($(ENVTEST_GO) list -m -f '{{.Version}}' k8s.io/kubernetes) && \
	mm=$${v#v} && major=$${mm%%.*} && minor=$${mm#*.} && minor=$${minor%%.*} && \
	pkg=k8s.io/component-base/version && \
	$(ENVTEST_GOBUILD) -ldflags="-s -w -X $$pkg.gitVersion=$$v -X $$pkg.gitMajor=$$major -X $$pkg.gitMinor=$$minor -X $$pkg.gitTreeState=clean" \
		-o $@.tmp k8s.io/kubernetes/cmd/kube-apiserver
	mv $@.tmp $@

$(ETCD_BIN): $(ENVTEST_ROOT)/hack/envtest/etcd/go.mod $(ENVTEST_ROOT)/hack/envtest/etcd/go.sum $(ENVTEST_ROOT)/hack/envtest/etcd/main.go
	@mkdir -p $(@D)
	cd $(ENVTEST_ROOT)/hack/envtest/etcd && $(ENVTEST_GOBUILD) -ldflags='-s -w' -o $@.tmp .
	mv $@.tmp $@

$(CONTROLLER_GEN): $(ENVTEST_ROOT)/hack/tools/go.mod $(ENVTEST_ROOT)/hack/tools/go.sum
	@mkdir -p $(@D)
	cd $(ENVTEST_ROOT)/hack/tools && $(ENVTEST_GOBUILD) -ldflags='-s -w' -o $@.tmp sigs.k8s.io/controller-tools/cmd/controller-gen
	mv $@.tmp $@

# controller-gen runs from the repository root so the Flux packages load at the
# exact versions sourceraft's go.mod pins, not controller-tools' own.
# Old files are removed first so a kind dropped upstream does not linger.
crds: $(CONTROLLER_GEN)
	rm -f $(ENVTEST_ROOT)/api/crds/*.yaml
	cd $(ENVTEST_ROOT) && GOWORK=off $(CONTROLLER_GEN) $(CRD_OPTIONS) paths=$(CRD_PACKAGES) output:crd:dir=api/crds
	$(CRD_LABEL) -dir api/crds $(CRD_LABELS)

verify-crds: $(CONTROLLER_GEN)
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	cd $(ENVTEST_ROOT) && GOWORK=off $(CONTROLLER_GEN) $(CRD_OPTIONS) paths=$(CRD_PACKAGES) output:crd:dir=$$tmp && \
	$(CRD_LABEL) -dir $$tmp $(CRD_LABELS) && \
	diff -r $$tmp api/crds && echo "api/crds is up to date"
