package reconcilers

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	eventv1 "github.com/fluxcd/pkg/apis/event/v1beta1"
	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	"github.com/fluxcd/pkg/runtime/patch"
	"github.com/fluxcd/pkg/runtime/predicates"
	rreconcile "github.com/fluxcd/pkg/runtime/reconcile"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/sourceraft/sourceraft/storage"
)

// sourceObject is what every Flux source kind offers the shared machinery
// (the sourcev1 types implement it).
type sourceObject interface {
	conditions.Setter
	GetRequeueAfter() time.Duration
	GetArtifact() *meta.Artifact
}

// sourceKind describes one Flux source kind to the shared reconcile flow:
// its name, its condition set, and the spec and status fields every kind
// has under its own type.
type sourceKind[O sourceObject] struct {
	// name is the Kubernetes kind: the metrics label, and lower-cased the
	// artifacts' kind in the store.
	name string
	// conds is the kind's condition set (conditions.go).
	conds rreconcile.Conditions
	// newObject returns an empty object of the kind.
	newObject func() O
	// suspended reads spec.suspend.
	suspended func(O) bool
	// observedGeneration reads status.observedGeneration.
	observedGeneration func(O) int64
	// lastHandledReconcileAt reads status.lastHandledReconcileAt.
	lastHandledReconcileAt func(O) string
	// setArtifact sets status.artifact and, on the kinds that have it,
	// status.url to the artifact's URL ("" for nil).
	setArtifact func(O, *meta.Artifact)
}

// patchOptions are the options of the kind's progress patches: it owns
// its condition set, as fieldOwner.
func (k *sourceKind[O]) patchOptions(fieldOwner string) []patch.Option {
	return []patch.Option{
		patch.WithOwnedConditions{Conditions: k.conds.Owned},
		patch.WithFieldOwner(fieldOwner),
	}
}

// markOutdated records that a new artifact is to be built, for why:
// ArtifactOutdated when the status names an artifact, Reconciling and
// Ready=Unknown; the progress is patched at once.
func (k *sourceKind[O]) markOutdated(ctx context.Context, sp *patch.SerialPatcher, obj O, fieldOwner, why string) error {
	if obj.GetArtifact() != nil {
		conditions.MarkTrue(obj, sourcev1.ArtifactOutdatedCondition, "NewRevision", "%s", why)
	}
	rreconcile.ProgressiveStatus(true, obj, meta.ProgressingReason, "building artifact: %s", why)
	if err := sp.Patch(ctx, obj, k.patchOptions(fieldOwner)...); err != nil {
		return NewGeneric(err, sourcev1.PatchOperationFailedReason)
	}
	return nil
}

// setupSource registers r for objects like obj, triggered by spec changes
// and by the reconcile.fluxcd.io/requestedAt annotation.
func setupSource(mgr ctrl.Manager, obj client.Object, concurrent int, r reconcile.Reconciler) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(obj, builder.WithPredicates(
			predicate.Or(predicate.GenerationChangedPredicate{}, predicates.ReconcileRequestedPredicate{}),
		)).
		WithOptions(controller.Options{MaxConcurrentReconciles: concurrent}).
		Complete(r)
}

// sourceReconcile is one kind's Reconcile: the flow every kind shares,
// with the kind's steps plugged in. A kind's reconciler builds it per
// reconcile from its own fields.
type sourceReconcile[O sourceObject, S any] struct {
	kind   *sourceKind[O]
	client client.Client
	*notifier
	store      *artifactStore
	fieldOwner string

	// static, when set, takes the objects of the kind that are not
	// reconciled into an artifact (an oci HelmRepository) out of the flow:
	// it reports whether obj is one, and the error of handling it.
	static func(ctx context.Context, sp *patch.SerialPatcher, obj O) (bool, error)
	// workDir asks for a fresh temporary working directory per reconcile,
	// handed to newState and removed afterwards.
	workDir bool
	// newState is the state the steps of one reconcile share; dir is the
	// working directory, "" without workDir.
	newState func(dir string) *S
	// steps are the kind's sub-reconcilers, run after reconcileStorage.
	steps []step[O, S]
	// notify records the events of a reconcile whose steps all succeeded.
	notify func(ctx context.Context, oldObj, obj O, st *S)
}

// reconcile handles fetch, deletion, the finalizer and suspension, then
// runs the sub-reconcilers; summarizeAndPatch ends every path (but that
// of a static object).
func (f *sourceReconcile[O, S]) reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	start := time.Now()
	obj := f.kind.newObject()
	if err := f.client.Get(ctx, req.NamespacedName, obj); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	sp := patch.NewSerialPatcher(obj, f.client)

	if f.static != nil {
		if static, err := f.static(ctx, sp, obj); static {
			return ctrl.Result{}, err
		}
	}

	persisted := obj.GetArtifact()
	var res Result
	defer func() {
		result, retErr = f.summarizeAndPatch(ctx, obj, sp, f.kind.conds, res, retErr)
		if retErr == nil {
			f.collectAfterPatch(ctx, obj, persisted)
		}
		recordDuration(f.kind.name, obj, start)
	}()

	if !obj.GetDeletionTimestamp().IsZero() {
		res, retErr = f.reconcileDelete(ctx, obj)
		return
	}
	// Add the finalizer before anything is stored, so no artifact can
	// outlive its object.
	if !controllerutil.ContainsFinalizer(obj, sourcev1.SourceFinalizer) {
		controllerutil.AddFinalizer(obj, sourcev1.SourceFinalizer)
		res = ResultRequeue
		return
	}
	if f.kind.suspended(obj) {
		ctrl.LoggerFrom(ctx).Info("reconciliation is suspended for this object")
		return
	}
	res, retErr = f.run(ctx, sp, obj)
	return
}

// collectAfterPatch applies the retention policy once the status names a
// new artifact. Collecting before the patch could remove the artifact the
// stored status still names if this replica lost leadership in between;
// if the patch never happens, the leader's periodic collection, which
// keeps each object's newest artifact, still applies the policy.
func (f *sourceReconcile[O, S]) collectAfterPatch(ctx context.Context, obj O, persisted *meta.Artifact) {
	a := obj.GetArtifact()
	if a == nil || persisted != nil && persisted.Path == a.Path {
		return
	}
	current, err := storage.ParsePath(a.Path)
	if err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "status artifact path")
		return
	}
	f.collectSuperseded(ctx, f.store, obj, current)
}

// run marks the object as progressing, runs reconcileStorage and the
// kind's steps (in a fresh working directory when the kind asks for one)
// and records the events of the outcome.
func (f *sourceReconcile[O, S]) run(ctx context.Context, sp *patch.SerialPatcher, obj O) (Result, error) {
	oldObj := obj.DeepCopyObject().(O)
	rreconcile.ProgressiveStatus(false, obj, meta.ProgressingReason, "reconciliation in progress")

	requestedAt, _ := meta.ReconcileAnnotationValue(obj.GetAnnotations())
	switch observed := f.kind.observedGeneration(obj); {
	case obj.GetGeneration() != observed:
		rreconcile.ProgressiveStatus(false, obj, meta.ProgressingReason,
			"processing object: new generation %d -> %d", observed, obj.GetGeneration())
		if err := sp.Patch(ctx, obj, f.kind.patchOptions(f.fieldOwner)...); err != nil {
			return ResultEmpty, NewGeneric(err, sourcev1.PatchOperationFailedReason)
		}
	case requestedAt != f.kind.lastHandledReconcileAt(obj):
		if err := sp.Patch(ctx, obj, f.kind.patchOptions(f.fieldOwner)...); err != nil {
			return ResultEmpty, NewGeneric(err, sourcev1.PatchOperationFailedReason)
		}
	}

	var dir string
	if f.workDir {
		var err error
		dir, err = os.MkdirTemp("", strings.ToLower(f.kind.name)+"-"+obj.GetNamespace()+"-"+obj.GetName()+"-")
		if err != nil {
			e := NewGeneric(fmt.Errorf("failed to create temporary working directory: %w", err), sourcev1.DirCreationFailedReason)
			conditions.MarkTrue(obj, sourcev1.StorageOperationFailedCondition, e.Reason, "%s", e)
			return ResultEmpty, e
		}
		defer func() {
			if err := os.RemoveAll(dir); err != nil {
				ctrl.LoggerFrom(ctx).Error(err, "failed to remove temporary working directory")
			}
		}()
	}

	st := f.newState(dir)
	res, err := runSteps(ctx, sp, obj, st, append([]step[O, S]{f.reconcileStorage}, f.steps...))
	if err == nil && res == ResultSuccess {
		f.notify(ctx, oldObj, obj, st)
	}
	return res, err
}

// reconcileStorage checks that the artifact in the status is still in the
// store, dropping it from the status when it is not, and keeps its URLs on
// the current advertised address.
//
// Sets Reconciling and Ready=Unknown when there is no artifact; removes
// ArtifactInStorage then.
func (f *sourceReconcile[O, S]) reconcileStorage(ctx context.Context, sp *patch.SerialPatcher, obj O, _ *S) (Result, error) {
	var missing bool
	if cur := obj.GetArtifact(); cur != nil {
		a, err := fromStatus(cur)
		if err == nil {
			var ok bool
			ok, err = f.store.Exists(ctx, a)
			missing = err == nil && !ok
		}
		if err != nil {
			e := NewGeneric(fmt.Errorf("failed to check the artifact in storage: %w", err), sourcev1.StatOperationFailedReason)
			conditions.MarkTrue(obj, sourcev1.StorageOperationFailedCondition, e.Reason, "%s", e)
			return ResultEmpty, e
		}
		if missing {
			f.kind.setArtifact(obj, nil)
		} else {
			cur.URL = a.URL(f.store.advAddr)
			f.kind.setArtifact(obj, cur)
		}
	}
	if obj.GetArtifact() == nil {
		msg := "building artifact"
		if missing {
			msg += ": disappeared from storage"
		}
		rreconcile.ProgressiveStatus(true, obj, meta.ProgressingReason, "%s", msg)
		conditions.Delete(obj, sourcev1.ArtifactInStorageCondition)
		if err := sp.Patch(ctx, obj, f.kind.patchOptions(f.fieldOwner)...); err != nil {
			return ResultEmpty, NewGeneric(err, sourcev1.PatchOperationFailedReason)
		}
	}
	return ResultSuccess, nil
}

// reconcileDelete removes every artifact of the object from the store,
// then the finalizer. A failure keeps the finalizer and is retried.
func (f *sourceReconcile[O, S]) reconcileDelete(ctx context.Context, obj O) (Result, error) {
	n, err := f.store.deleteAll(ctx, f.kind.name, obj)
	if err != nil {
		return ResultEmpty, NewGeneric(fmt.Errorf("garbage collection for deleted resource failed: %w", err), GarbageCollectionFailedReason)
	}
	if n > 0 {
		f.AnnotatedEventf(obj, nil, eventv1.EventTypeTrace, GarbageCollectionSucceededReason,
			"garbage collected %d artifacts for deleted resource", n)
	}
	f.kind.setArtifact(obj, nil)
	controllerutil.RemoveFinalizer(obj, sourcev1.SourceFinalizer)
	forgetDuration(f.kind.name, obj)
	return ResultEmpty, nil
}
