# The controller's container image, built with ko into a tarball.
#
# Include from the top-level Makefile (`include mk/image.mk`). Paths are
# anchored at the repository root found from this file's location, so the
# fragment works whatever directory make was started in.
#
# Targets:
#   image        $(IMAGE_TAR): $(IMAGE) for linux/amd64, a `docker save`
#                style tarball (kind load image-archive, ctr images import,
#                crane push, docker load)
#   image-test   build it, then check it in test/image: name, platform,
#                non-root user, and the binary extracted from it runs
#   ko-bin       bin/ko
#
# Neither a Docker engine nor a registry is needed: hack/image builds the base
# image itself and serves it to ko from an in-memory registry on 127.0.0.1
# (see hack/image/main.go for why and what the base holds). ko is compiled
# from the throwaway module hack/ko, pinned there; it is a plain file target,
# rebuilt only when that pin changes. `image` always runs: ko reuses the Go
# build cache, so an unchanged tree rebuilds in seconds.

IMAGE_ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))/..)
KO := $(IMAGE_ROOT)/bin/ko
# What deploy/statefulset runs; test/image fails when the two differ.
IMAGE ?= ghcr.io/sourceraft/source-controller:latest
IMAGE_TAR ?= $(IMAGE_ROOT)/bin/source-controller-image.tar
# Timestamps in the image are the last commit's time, so rebuilding a commit
# gives the same digest (https://reproducible-builds.org/specs/source-date-epoch/).
SOURCE_DATE_EPOCH ?= $(shell git -C $(IMAGE_ROOT) log -1 --format=%ct 2>/dev/null || echo 0)

# Same conventions as mk/envtest.mk: -mod=mod completes go.sum on a fresh
# machine, GOWORK=off ignores a developer's go.work, -buildvcs=false because
# this is not sourceraft's code, CGO_ENABLED=0 as ko's release builds.
KO_GO := GOWORK=off GOFLAGS='-mod=mod -buildvcs=false' CGO_ENABLED=0 go

.PHONY: image image-test ko-bin

ko-bin: $(KO)

$(KO): $(IMAGE_ROOT)/hack/ko/go.mod $(IMAGE_ROOT)/hack/ko/go.sum
	@mkdir -p $(@D)
	cd $(IMAGE_ROOT)/hack/ko && $(KO_GO) build -trimpath -ldflags='-s -w' -o $@.tmp github.com/google/ko
	mv $@.tmp $@

image: $(KO)
	cd $(IMAGE_ROOT) && SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) GOWORK=off go run ./hack/image \
		-ko $(KO) -image $(IMAGE) -o $(IMAGE_TAR) -config hack/image/ko.yaml ./cmd/source-controller

image-test: image
	cd $(IMAGE_ROOT) && SOURCERAFT_IMAGE=$(IMAGE_TAR) go test -count=1 -timeout 5m -v ./test/image/
