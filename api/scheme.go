// Package api registers the Flux source kinds and ships their CRDs.
//
// sourceraft serves the Flux API unchanged, so the Go types are Flux's own
// (github.com/fluxcd/source-controller/api/v1) and the CRD manifests under
// crds/ are generated from them by controller-gen (`make crds`), never
// edited by hand: a drift from upstream would break drop-in compatibility.
package api

import (
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
)

// AddToScheme adds the built-in Kubernetes kinds (the reconcilers also touch
// Secrets, ConfigMaps, Events and Namespaces) and every
// source.toolkit.fluxcd.io/v1 kind to s.
func AddToScheme(s *runtime.Scheme) error {
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return err
	}
	return sourcev1.AddToScheme(s)
}

// Scheme returns a new scheme filled by AddToScheme. Each call returns a
// fresh one so that callers registering extra kinds do not affect each other.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	// Registration only fails on conflicting duplicate kinds, which would be
	// a build-time mistake in the upstream packages, not a runtime condition.
	utilruntime.Must(AddToScheme(s))
	return s
}
