package reconcilers

import (
	"time"

	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/sourceraft/sourceraft/metrics"
)

// recordDuration observes one reconcile of obj in
// gotk_reconcile_duration_seconds, unless the object is gone.
func recordDuration(kind string, obj client.Object, start time.Time) {
	if !obj.GetDeletionTimestamp().IsZero() && !controllerutil.ContainsFinalizer(obj, sourcev1.SourceFinalizer) {
		return
	}
	metrics.ReconcileDuration.WithLabelValues(kind, obj.GetName(), obj.GetNamespace()).Observe(time.Since(start).Seconds())
}

// forgetDuration drops the series of a deleted object.
func forgetDuration(kind string, obj client.Object) {
	metrics.ReconcileDuration.DeleteLabelValues(kind, obj.GetName(), obj.GetNamespace())
}
