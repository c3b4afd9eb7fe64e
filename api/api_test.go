package api

import (
	"testing"

	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	corev1 "k8s.io/api/core/v1"
)

// sourceKinds are the kinds sourceraft reconciles; each must be in the scheme
// and have a CRD serving and storing v1, as Flux's own manifests do.
var sourceKinds = []string{
	sourcev1.GitRepositoryKind,
	sourcev1.HelmRepositoryKind,
	sourcev1.HelmChartKind,
	sourcev1.OCIRepositoryKind,
	sourcev1.BucketKind,
}

func TestCRDsCoverSourceKinds(t *testing.T) {
	crds, err := CRDs()
	if err != nil {
		t.Fatal(err)
	}
	byKind := map[string]bool{}
	for _, crd := range crds {
		if crd.Spec.Group != sourcev1.GroupVersion.Group {
			t.Errorf("%s: group %q, want %q", crd.Name, crd.Spec.Group, sourcev1.GroupVersion.Group)
		}
		var storedV1 bool
		for _, v := range crd.Spec.Versions {
			if v.Name == sourcev1.GroupVersion.Version && v.Served && v.Storage {
				storedV1 = true
			}
			if v.Schema == nil || v.Schema.OpenAPIV3Schema == nil {
				t.Errorf("%s %s: no schema", crd.Name, v.Name)
			}
		}
		if !storedV1 {
			t.Errorf("%s: v1 is not both served and the storage version", crd.Name)
		}
		byKind[crd.Spec.Names.Kind] = true
	}
	for _, k := range sourceKinds {
		if !byKind[k] {
			t.Errorf("no CRD for %s", k)
		}
	}
}

// The Flux CLI finds the CRDs by Flux's labels (flux check, flux
// uninstall); `make crds` adds them after controller-gen (hack/crdlabels).
func TestCRDsCarryFluxLabels(t *testing.T) {
	crds, err := CRDs()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"app.kubernetes.io/part-of": "flux", "app.kubernetes.io/component": "source-controller"}
	for _, crd := range crds {
		for k, v := range want {
			if got := crd.Labels[k]; got != v {
				t.Errorf("%s: label %s=%q, want %q: run make crds", crd.Name, k, got, v)
			}
		}
	}
}

func TestSchemeKnowsSourceAndCoreKinds(t *testing.T) {
	s := Scheme()
	for _, k := range sourceKinds {
		for _, kind := range []string{k, k + "List"} {
			if !s.Recognizes(sourcev1.GroupVersion.WithKind(kind)) {
				t.Errorf("scheme does not recognize %s", kind)
			}
		}
	}
	if !s.Recognizes(corev1.SchemeGroupVersion.WithKind("Secret")) {
		t.Error("scheme does not recognize core/v1 Secret")
	}
}
