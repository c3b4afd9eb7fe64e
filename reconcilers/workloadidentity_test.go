package reconcilers

import (
	"errors"
	"testing"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/auth"
)

// With the ObjectLevelWorkloadIdentity gate off, an object naming a
// ServiceAccount stalls with Flux's reason and message instead of
// authenticating as the controller; one without, or with the gate on,
// goes on. The gate is process-wide: this test is not parallel and puts
// it back.
func TestObjectLevelIdentityCheck(t *testing.T) {
	was := auth.IsObjectLevelWorkloadIdentityEnabled()
	t.Cleanup(func() {
		if was {
			auth.EnableObjectLevelWorkloadIdentity()
		} else {
			auth.DisableObjectLevelWorkloadIdentity()
		}
	})

	auth.DisableObjectLevelWorkloadIdentity()
	err := objectLevelIdentityCheck("puller")
	var e *Error
	if !errors.As(err, &e) || !e.Stall || e.Reason != meta.FeatureGateDisabledReason {
		t.Fatalf("gate off: error %#v, want a stall with reason %s", err, meta.FeatureGateDisabledReason)
	}
	const want = "to use spec.serviceAccountName for provider authentication please enable the ObjectLevelWorkloadIdentity feature gate in the controller"
	if err.Error() != want {
		t.Errorf("gate off: message %q, want %q", err, want)
	}
	if err := objectLevelIdentityCheck(""); err != nil {
		t.Errorf("gate off, no ServiceAccount: %v", err)
	}

	auth.EnableObjectLevelWorkloadIdentity()
	if err := objectLevelIdentityCheck("puller"); err != nil {
		t.Errorf("gate on: %v", err)
	}
}
