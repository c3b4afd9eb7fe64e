package reconcilers

import (
	"errors"
	"strings"
	"testing"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/auth"

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

// TestObjectLevelIdentityGate stalls a ServiceAccount identity while
// the gate is off, with Flux's reason, and lets the controller's own
// identity through. Not parallel: the gate is process-global.
func TestObjectLevelIdentityGate(t *testing.T) {
	was := auth.IsObjectLevelWorkloadIdentityEnabled()
	t.Cleanup(func() {
		if was {
			auth.EnableObjectLevelWorkloadIdentity()
		} else {
			auth.DisableObjectLevelWorkloadIdentity()
		}
	})
	auth.DisableObjectLevelWorkloadIdentity()
	if err := objectLevelIdentityCheck(""); err != nil {
		t.Errorf("controller identity with the gate off: %v", err)
	}
	var e *Error
	if err := objectLevelIdentityCheck("puller"); !errors.As(err, &e) || !e.Stall || e.Reason != meta.FeatureGateDisabledReason ||
		!strings.Contains(e.Error(), "enable the ObjectLevelWorkloadIdentity feature gate") {
		t.Errorf("ServiceAccount identity with the gate off: %v", err)
	}
	auth.EnableObjectLevelWorkloadIdentity()
	if err := objectLevelIdentityCheck("puller"); err != nil {
		t.Errorf("ServiceAccount identity with the gate on: %v", err)
	}
}
