package reconcilers

import (
	"context"
	"encoding/json"
	"errors"
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
	corev1 "k8s.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
)

// helmRepositoryConditions is the condition set of HelmRepository (see
// conditions.go for how it is used).
var helmRepositoryConditions = rreconcile.Conditions{
	Target: meta.ReadyCondition,
	Owned: []string{
		sourcev1.StorageOperationFailedCondition,
		sourcev1.FetchFailedCondition,
		sourcev1.ArtifactOutdatedCondition,
		sourcev1.ArtifactInStorageCondition,
		meta.ReadyCondition,
		meta.ReconcilingCondition,
		meta.StalledCondition,
	},
	Summarize: []string{
		sourcev1.StorageOperationFailedCondition,
		sourcev1.FetchFailedCondition,
		sourcev1.ArtifactOutdatedCondition,
		sourcev1.ArtifactInStorageCondition,
		meta.StalledCondition,
		meta.ReconcilingCondition,
	},
	NegativePolarity: []string{
		sourcev1.StorageOperationFailedCondition,
		sourcev1.FetchFailedCondition,
		sourcev1.ArtifactOutdatedCondition,
		meta.StalledCondition,
		meta.ReconcilingCondition,
	},
}

// helmRepositoryFailConditions are the conditions whose removal after a
// failure is a recovery worth an event.
var helmRepositoryFailConditions = []string{
	sourcev1.FetchFailedCondition,
	sourcev1.StorageOperationFailedCondition,
}

// HelmRepositoryReconciler reconciles source.toolkit.fluxcd.io/v1
// HelmRepository objects of the default type (an HTTP(S) repository) into
// an artifact of the repository's normalised index, as Flux does: the
// revision is the sha256 digest of the fetched index.yaml, the artifact
// index-<hex of that digest>.yaml holds the index with its entries sorted,
// as JSON. Objects of type oci are static (Flux v1): they have no
// artifact and no status, and any left from the default type is removed.
type HelmRepositoryReconciler struct {
	// Client writes only while this replica leads (see leaderclient.go).
	client.Client
	*notifier
	store *artifactStore

	ControllerName string
	// IndexMaxSize bounds the fetched index.yaml; zero is
	// DefaultHelmIndexMaxSize.
	IndexMaxSize int64
}

// helmRepoState is what the sub-reconcilers of one reconcile share.
type helmRepoState struct {
	// url is the repository URL the index was fetched from.
	url string
	// revision is the digest of the fetched index, set by reconcileSource.
	revision string
	// index is the normalised index as stored, set by reconcileSource
	// unless the revision is the stored artifact's.
	index []byte
}

type helmRepoStep = step[*sourcev1.HelmRepository, helmRepoState]

// SetupWithManager registers the reconciler, triggered by spec changes
// and by the reconcile.fluxcd.io/requestedAt annotation.
func (r *HelmRepositoryReconciler) SetupWithManager(mgr ctrl.Manager, concurrent int) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&sourcev1.HelmRepository{}, builder.WithPredicates(
			predicate.Or(predicate.GenerationChangedPredicate{}, predicates.ReconcileRequestedPredicate{}),
		)).
		WithOptions(controller.Options{MaxConcurrentReconciles: concurrent}).
		Complete(r)
}

// Reconcile handles fetch, the oci type, deletion, the finalizer and
// suspension, then runs the sub-reconcilers; summarizeAndPatch ends every
// path but the oci one.
func (r *HelmRepositoryReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	start := time.Now()
	obj := &sourcev1.HelmRepository{}
	if err := r.Get(ctx, req.NamespacedName, obj); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	sp := patch.NewSerialPatcher(obj, r.Client)

	if obj.Spec.Type == sourcev1.HelmRepositoryTypeOCI {
		return ctrl.Result{}, r.makeStatic(ctx, sp, obj)
	}

	var res Result
	defer func() {
		result, retErr = r.summarizeAndPatch(ctx, obj, sp, helmRepositoryConditions, res, retErr)
		recordDuration(sourcev1.HelmRepositoryKind, obj, start)
	}()

	if !obj.DeletionTimestamp.IsZero() {
		res, retErr = r.reconcileDelete(ctx, obj)
		return
	}
	if !controllerutil.ContainsFinalizer(obj, sourcev1.SourceFinalizer) {
		controllerutil.AddFinalizer(obj, sourcev1.SourceFinalizer)
		res = ResultRequeue
		return
	}
	if obj.Spec.Suspend {
		ctrl.LoggerFrom(ctx).Info("reconciliation is suspended for this object")
		return
	}
	res, retErr = r.reconcile(ctx, sp, obj)
	return
}

// makeStatic turns an oci HelmRepository into the static object Flux v1
// keeps it as: HelmCharts use its URL and secrets directly, so it has no
// artifact, no finalizer and an empty status. Artifacts of an earlier
// default type are deleted first.
func (r *HelmRepositoryReconciler) makeStatic(ctx context.Context, sp *patch.SerialPatcher, obj *sourcev1.HelmRepository) error {
	if obj.Spec.Suspend && obj.DeletionTimestamp.IsZero() {
		return nil
	}
	if !controllerutil.ContainsFinalizer(obj, sourcev1.SourceFinalizer) && equalHelmRepoStatus(obj.Status, sourcev1.HelmRepositoryStatus{}) {
		return nil
	}
	if _, err := r.store.deleteAll(ctx, sourcev1.HelmRepositoryKind, obj); err != nil {
		return fmt.Errorf("garbage collection of the artifacts of an oci HelmRepository failed: %w", err)
	}
	controllerutil.RemoveFinalizer(obj, sourcev1.SourceFinalizer)
	obj.Status = sourcev1.HelmRepositoryStatus{}
	forgetDuration(sourcev1.HelmRepositoryKind, obj)
	if err := sp.Patch(ctx, obj, patch.WithFieldOwner(r.ControllerName)); err != nil {
		return client.IgnoreNotFound(err)
	}
	return nil
}

func equalHelmRepoStatus(a, b sourcev1.HelmRepositoryStatus) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

// reconcile marks the object as progressing, runs the sub-reconcilers and
// records the events of the outcome.
func (r *HelmRepositoryReconciler) reconcile(ctx context.Context, sp *patch.SerialPatcher, obj *sourcev1.HelmRepository) (Result, error) {
	oldObj := obj.DeepCopy()
	rreconcile.ProgressiveStatus(false, obj, meta.ProgressingReason, "reconciliation in progress")

	requestedAt, _ := meta.ReconcileAnnotationValue(obj.GetAnnotations())
	switch {
	case obj.Generation != obj.Status.ObservedGeneration:
		rreconcile.ProgressiveStatus(false, obj, meta.ProgressingReason,
			"processing object: new generation %d -> %d", obj.Status.ObservedGeneration, obj.Generation)
		if err := sp.Patch(ctx, obj, r.patchOptions()...); err != nil {
			return ResultEmpty, NewGeneric(err, sourcev1.PatchOperationFailedReason)
		}
	case requestedAt != obj.Status.GetLastHandledReconcileRequest():
		if err := sp.Patch(ctx, obj, r.patchOptions()...); err != nil {
			return ResultEmpty, NewGeneric(err, sourcev1.PatchOperationFailedReason)
		}
	}

	st := &helmRepoState{}
	res, err := runSteps(ctx, sp, obj, st, []helmRepoStep{
		r.reconcileStorage,
		r.reconcileSource,
		r.reconcileArtifact,
	})
	if err == nil && res == ResultSuccess && obj.GetArtifact() != nil {
		size := "unknown size"
		if s := obj.GetArtifact().Size; s != nil {
			size = fmt.Sprintf("size %s", helmHumanSize(*s))
		}
		r.notifySuccess(ctx, oldObj, obj, helmRepositoryFailConditions,
			fmt.Sprintf("stored fetched index of %s from '%s'", size, st.url))
	}
	return res, err
}

func (r *HelmRepositoryReconciler) patchOptions() []patch.Option {
	return []patch.Option{
		patch.WithOwnedConditions{Conditions: helmRepositoryConditions.Owned},
		patch.WithFieldOwner(r.ControllerName),
	}
}

// reconcileStorage is helmCheckStored for HelmRepository.
func (r *HelmRepositoryReconciler) reconcileStorage(ctx context.Context, sp *patch.SerialPatcher, obj *sourcev1.HelmRepository, _ *helmRepoState) (Result, error) {
	return helmCheckStored(ctx, r.store, sp, obj, func(a *meta.Artifact, url string) {
		obj.Status.Artifact, obj.Status.URL = a, url
	}, r.patchOptions())
}

// reconcileSource fetches and normalises the repository index.
//
// Sets FetchFailed (invalid URL: also Stalled; missing or invalid secret,
// fetch failure, index over the size limit, invalid index); removes it on
// success. Sets ArtifactOutdated, Reconciling and Ready=Unknown when the
// index revision differs from the stored artifact's.
func (r *HelmRepositoryReconciler) reconcileSource(ctx context.Context, sp *patch.SerialPatcher, obj *sourcev1.HelmRepository, st *helmRepoState) (Result, error) {
	base, err := parseHelmRepoURL(obj.Spec.URL)
	if err != nil {
		e := NewStalling(err, sourcev1.URLInvalidReason)
		conditions.MarkTrue(obj, sourcev1.FetchFailedCondition, e.Reason, "%s", e)
		return ResultEmpty, e
	}
	if err := unsupportedHelmRepoSpec(obj); err != nil {
		e := NewStalling(err, UnsupportedFieldReason)
		conditions.MarkTrue(obj, sourcev1.FetchFailedCondition, e.Reason, "%s", e)
		return ResultEmpty, e
	}
	st.url = obj.Spec.URL
	hc, err := newHelmRepoClient(ctx, r.Client, obj, base)
	if err != nil {
		e := NewGeneric(err, sourcev1.AuthenticationFailedReason)
		conditions.MarkTrue(obj, sourcev1.FetchFailedCondition, e.Reason, "%s", e)
		return ResultEmpty, e
	}
	defer hc.close()

	fetchCtx, cancel := context.WithTimeout(ctx, helmTimeout(obj))
	defer cancel()
	file, revision, err := hc.fetchToFile(fetchCtx, hc.indexURL(), "", "helmrepository-index-*.yaml", helmLimits{IndexMaxSize: r.IndexMaxSize}.index())
	if err != nil {
		e := NewGeneric(fmt.Errorf("failed to fetch Helm repository index: %w", err), meta.FailedReason)
		conditions.MarkTrue(obj, sourcev1.FetchFailedCondition, e.Reason, "%s", e)
		return ResultEmpty, e
	}
	defer os.Remove(file)
	st.revision = revision

	if obj.GetArtifact().HasRevision(revision) {
		conditions.Delete(obj, sourcev1.FetchFailedCondition)
		return ResultSuccess, nil
	}
	idx, err := helmLoadIndex(file)
	if err == nil {
		st.index, err = json.MarshalIndent(idx, "", "  ")
	}
	if err != nil {
		e := NewGeneric(fmt.Errorf("failed to load Helm repository from index YAML: %w", err), sourcev1.IndexationFailedReason)
		conditions.MarkTrue(obj, sourcev1.FetchFailedCondition, e.Reason, "%s", e)
		return ResultEmpty, e
	}
	conditions.Delete(obj, sourcev1.FetchFailedCondition)

	msg := fmt.Sprintf("new index revision '%s'", revision)
	if obj.GetArtifact() != nil {
		conditions.MarkTrue(obj, sourcev1.ArtifactOutdatedCondition, "NewRevision", "%s", msg)
	}
	rreconcile.ProgressiveStatus(true, obj, meta.ProgressingReason, "building artifact: %s", msg)
	if err := sp.Patch(ctx, obj, r.patchOptions()...); err != nil {
		return ResultEmpty, NewGeneric(err, sourcev1.PatchOperationFailedReason)
	}
	return ResultSuccess, nil
}

// reconcileArtifact stores the normalised index unless the stored
// artifact already has its revision, records it in the status and
// collects superseded artifacts.
//
// Sets StorageOperationFailed (the store refused the artifact); removes it
// and ArtifactOutdated on success, and sets ArtifactInStorage=True when the
// status names an artifact of the fetched revision.
func (r *HelmRepositoryReconciler) reconcileArtifact(ctx context.Context, _ *patch.SerialPatcher, obj *sourcev1.HelmRepository, st *helmRepoState) (Result, error) {
	defer func() {
		if obj.GetArtifact().HasRevision(st.revision) {
			conditions.Delete(obj, sourcev1.ArtifactOutdatedCondition)
			conditions.MarkTrue(obj, sourcev1.ArtifactInStorageCondition, meta.SucceededReason,
				"stored artifact: revision '%s'", st.revision)
		}
	}()
	if obj.GetArtifact().HasRevision(st.revision) {
		r.AnnotatedEventf(obj, artifactAnnotations(obj.GetArtifact()), eventv1.EventTypeTrace, sourcev1.ArtifactUpToDateReason,
			"artifact up-to-date with remote revision: '%s'", st.revision)
		return ResultSuccess, nil
	}

	hex := strings.TrimPrefix(st.revision, "sha256:")
	art := newArtifactFor(sourcev1.HelmRepositoryKind, obj, st.revision, "index-"+hex+".yaml")
	if err := r.store.Store(ctx, &art, strings.NewReader(string(st.index))); err != nil {
		e := NewGeneric(fmt.Errorf("unable to save artifact to storage: %w", err), StoreFailedReason)
		conditions.MarkTrue(obj, sourcev1.StorageOperationFailedCondition, e.Reason, "%s", e)
		return ResultEmpty, e
	}
	conditions.Delete(obj, sourcev1.StorageOperationFailedCondition)

	// The artifact is committed: only now may the status name it.
	obj.Status.Artifact = r.store.toStatus(art)
	obj.Status.URL = obj.Status.Artifact.URL

	if err := r.store.collectGarbage(ctx, art); err != nil {
		r.AnnotatedEventf(obj, nil, corev1.EventTypeWarning, GarbageCollectionFailedReason,
			"garbage collection of superseded artifacts failed: %s", err)
	}
	return ResultSuccess, nil
}

// reconcileDelete removes every artifact of the object from the store,
// then the finalizer. A failure keeps the finalizer and is retried.
func (r *HelmRepositoryReconciler) reconcileDelete(ctx context.Context, obj *sourcev1.HelmRepository) (Result, error) {
	n, err := r.store.deleteAll(ctx, sourcev1.HelmRepositoryKind, obj)
	if err != nil {
		return ResultEmpty, NewGeneric(fmt.Errorf("garbage collection for deleted resource failed: %w", err), GarbageCollectionFailedReason)
	}
	if n > 0 {
		r.AnnotatedEventf(obj, nil, eventv1.EventTypeTrace, GarbageCollectionSucceededReason,
			"garbage collected %d artifacts for deleted resource", n)
	}
	obj.Status.Artifact = nil
	obj.Status.URL = ""
	controllerutil.RemoveFinalizer(obj, sourcev1.SourceFinalizer)
	forgetDuration(sourcev1.HelmRepositoryKind, obj)
	return ResultEmpty, nil
}

// unsupportedHelmRepoSpec names the spec fields of a default-type
// HelmRepository this build cannot honour. spec.provider only applies to
// the oci type in Flux; anything but generic is refused here rather than
// silently fetching anonymously.
func unsupportedHelmRepoSpec(obj *sourcev1.HelmRepository) error {
	var fields []string
	if p := obj.Spec.Provider; p != "" && p != sourcev1.GenericOCIProvider {
		fields = append(fields, "spec.provider '"+p+"'")
	}
	if len(fields) == 0 {
		return nil
	}
	return errors.New("not supported by sourceraft yet: " + strings.Join(fields, ", "))
}

// helmHumanSize formats a byte count like the Flux event messages do.
func helmHumanSize(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.4g%cB", float64(n)/float64(div), "kMGTPE"[exp])
}
