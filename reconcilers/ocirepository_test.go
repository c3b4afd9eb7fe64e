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
