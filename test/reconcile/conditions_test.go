package reconcile

import (
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	"github.com/fluxcd/pkg/runtime/object"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// waitFailedAsFlux waits until the object ns/name reports a failure of
// its condition cond with reason the way Flux's source-controller does,
// which is what kstatus and the Flux CLI read: Ready=False with the
// failure's reason and message, and either Stalled=True with that reason,
// no Reconciling and observedGeneration current (a failure only a change
// can fix), or Reconciling=True with reason ProgressingWithRetry and no
// Stalled (a failure that is retried).
func waitFailedAsFlux[T interface {
	sourceObject
	client.Object
}](t *testing.T, ns, name, cond, reason string, stalled bool) T {
	t.Helper()
	what := cond + "=" + reason + ", Ready=False and Reconciling=" + meta.ProgressingWithRetryReason
	if stalled {
		what = cond + "=" + reason + ", Ready=False, Stalled and no Reconciling"
	}
	return waitForObject(t, ns, name, 60*time.Second, what, func(o T) bool {
		if !conditions.IsTrue(o, cond) || conditions.GetReason(o, cond) != reason ||
			!conditions.IsFalse(o, meta.ReadyCondition) || conditions.GetReason(o, meta.ReadyCondition) != reason ||
			conditions.GetMessage(o, meta.ReadyCondition) != conditions.GetMessage(o, cond) {
			return false
		}
		if stalled {
			return conditions.IsTrue(o, meta.StalledCondition) && conditions.GetReason(o, meta.StalledCondition) == reason &&
				!conditions.Has(o, meta.ReconcilingCondition) && observedGeneration(t, o) == o.GetGeneration()
		}
		return !conditions.Has(o, meta.StalledCondition) && conditions.IsTrue(o, meta.ReconcilingCondition) &&
			conditions.GetReason(o, meta.ReconcilingCondition) == meta.ProgressingWithRetryReason
	})
}

// observedGeneration reads status.observedGeneration of any source kind.
func observedGeneration(t *testing.T, o client.Object) int64 {
	t.Helper()
	g, err := object.GetStatusObservedGeneration(o)
	if err != nil {
		t.Fatal(err)
	}
	return g
}
