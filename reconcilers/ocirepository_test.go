package reconcilers

import (
	"testing"

	sourcev1 "github.com/fluxcd/source-controller/api/v1"
)

func TestOCIContentConfigChanged(t *testing.T) {
	ign := "docs/"
	obj := &sourcev1.OCIRepository{}
	if ociContentConfigChanged(obj) {
		t.Error("empty spec and status differ")
	}
	obj.Spec.LayerSelector = &sourcev1.OCILayerSelector{MediaType: "a"}
	obj.Status.ObservedLayerSelector = &sourcev1.OCILayerSelector{MediaType: "a"}
	if ociContentConfigChanged(obj) {
		t.Error("equal selectors differ")
	}
	obj.Spec.LayerSelector.Operation = sourcev1.OCILayerCopy
	if !ociContentConfigChanged(obj) {
		t.Error("a new operation is not a change")
	}
	obj.Status.ObservedLayerSelector = obj.Spec.LayerSelector.DeepCopy()
	obj.Spec.Ignore = &ign
	if !ociContentConfigChanged(obj) {
		t.Error("a new ignore is not a change")
	}
}

func TestUnsupportedOCISpec(t *testing.T) {
	obj := &sourcev1.OCIRepository{}
	obj.Spec.Provider = sourcev1.GenericOCIProvider
	obj.Spec.CertSecretRef = nil
	if err := unsupportedOCISpec(obj); err != nil {
		t.Errorf("generic provider: %v", err)
	}
	obj.Spec.Provider = sourcev1.AzureOCIProvider
	obj.Spec.Verify = &sourcev1.OCIRepositoryVerification{Provider: "notation"}
	err := unsupportedOCISpec(obj)
	if err == nil || err.Error() != "not supported by sourceraft yet: spec.provider 'azure'" {
		t.Errorf("unsupported: %v", err)
	}
}
