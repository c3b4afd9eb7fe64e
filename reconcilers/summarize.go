package reconcilers

import (
	"context"
	"errors"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	"github.com/fluxcd/pkg/runtime/patch"
	rreconcile "github.com/fluxcd/pkg/runtime/reconcile"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
)

// requeueNow is the delay of ResultRequeue: as soon as possible.
const requeueNow = time.Millisecond

// summarizeAndPatch is the one place where a reconcile ends: it reports
// recErr by its policy (errors.go), turns the sub-reconcilers' result into
// the work queue's, computes Stalled, Reconciling and the Ready summary
// of the kind's condition set, records lastHandledReconcileAt, and patches
// the object and its status, with observedGeneration once the object is
// Ready or Stalled. It runs on every exit path of Reconcile.
func (n *notifier) summarizeAndPatch(ctx context.Context, obj sourceObject, sp *patch.SerialPatcher,
	conds rreconcile.Conditions, res Result, recErr error) (ctrl.Result, error) {
	n.reportError(ctx, obj, recErr)

	interval := obj.GetRequeueAfter()
	var e *Error
	errors.As(recErr, &e)
	var (
		result ctrl.Result
		err    = recErr
	)
	switch {
	case e != nil && e.Stall:
		conditions.MarkStalled(obj, e.Reason, "%s", e.Error())
		err = nil
	case e != nil && e.RequeueAfter > 0:
		result, err = ctrl.Result{RequeueAfter: e.RequeueAfter}, nil
	case recErr != nil:
		// Retried with the work queue's backoff.
	case res == ResultRequeue:
		result = ctrl.Result{RequeueAfter: requeueNow}
	case res == ResultSuccess:
		result = ctrl.Result{RequeueAfter: interval}
	}
	if e == nil || !e.Stall {
		conditions.Delete(obj, meta.StalledCondition)
	}

	// Success is a clean run that comes back at spec.interval; anything
	// else leaves Reconciling in place so kstatus reports progress, with
	// Flux's ProgressingWithRetry reason: the work is not done and will be
	// tried again (a stall removes Reconciling below).
	isSuccess := func(r ctrl.Result, err error) bool {
		return err == nil && r.RequeueAfter == interval
	}
	if !isSuccess(result, err) && conditions.IsReconciling(obj) {
		reconciling := conditions.Get(obj, meta.ReconcilingCondition)
		reconciling.Reason = meta.ProgressingWithRetryReason
		conditions.Set(obj, reconciling)
	}
	err = rreconcile.NewResultFinalizer(isSuccess, "reconciliation succeeded", conds).Finalize(obj, result, err)
	// SourceVerified is positive when True and the cause of the failure
	// when False (Flux's bipolarity conditions): then Ready says so,
	// rather than the Reconciling of the retry.
	if v := conditions.Get(obj, sourcev1.SourceVerifiedCondition); v != nil && v.Status == metav1.ConditionFalse {
		conditions.MarkFalse(obj, meta.ReadyCondition, v.Reason, "%s", v.Message)
	}

	opts := rreconcile.AddPatchOptions(obj, nil, conds.Owned, n.controllerName)
	if perr := sp.Patch(ctx, obj, opts...); perr != nil {
		// The finalizer was just removed and the object is gone.
		if !(apierrors.IsNotFound(perr) && !obj.GetDeletionTimestamp().IsZero()) {
			err = errors.Join(err, perr)
		}
	}
	return result, err
}
