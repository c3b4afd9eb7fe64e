package reconcilers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

	"github.com/sourceraft/sourceraft/archive"
	"github.com/sourceraft/sourceraft/storage"
)

// ociRepositoryConditions is the condition set of OCIRepository: Flux's,
// without SourceVerified (spec.verify stalls as unsupported) and with
// BuildFailed, which sourceraft sets when a layer is over a size limit or
// its content cannot be archived.
var ociRepositoryConditions = rreconcile.Conditions{
	Target: meta.ReadyCondition,
	Owned: []string{
		sourcev1.StorageOperationFailedCondition,
		sourcev1.FetchFailedCondition,
		sourcev1.BuildFailedCondition,
		sourcev1.ArtifactOutdatedCondition,
		sourcev1.ArtifactInStorageCondition,
		meta.ReadyCondition,
		meta.ReconcilingCondition,
		meta.StalledCondition,
	},
	// Order matters: the first negative condition that is True gives Ready
	// its reason and message.
	Summarize: []string{
		sourcev1.StorageOperationFailedCondition,
		sourcev1.FetchFailedCondition,
		sourcev1.BuildFailedCondition,
		sourcev1.ArtifactOutdatedCondition,
		sourcev1.ArtifactInStorageCondition,
		meta.StalledCondition,
		meta.ReconcilingCondition,
	},
	NegativePolarity: []string{
		sourcev1.StorageOperationFailedCondition,
		sourcev1.FetchFailedCondition,
		sourcev1.BuildFailedCondition,
		sourcev1.ArtifactOutdatedCondition,
		meta.StalledCondition,
		meta.ReconcilingCondition,
	},
}

// ociRepositoryFailConditions are the conditions whose removal after a
// failure is a recovery worth an event.
var ociRepositoryFailConditions = []string{
	sourcev1.FetchFailedCondition,
	sourcev1.BuildFailedCondition,
	sourcev1.StorageOperationFailedCondition,
}

// defaultOCITimeout bounds registry operations when spec.timeout is unset
// (the CRD defaults it to the same value).
const defaultOCITimeout = 60 * time.Second

// DefaultOCILayerMaxSize bounds the compressed size of a pulled layer when
// neither Options.OCILayerMaxSize nor Options.ArchiveMaxSize is set: the
// 100 MiB fluxcd/pkg/tar applies by default, which is also what Flux
// consumers extract at most.
const DefaultOCILayerMaxSize = 100 << 20

// OCIRepositoryReconciler reconciles source.toolkit.fluxcd.io/v1
// OCIRepository objects into artifacts in the replicated store: the
// selected layer of the referenced OCI artifact, extracted and re-archived
// deterministically, or stored as it is.
type OCIRepositoryReconciler struct {
	// Client writes only while this replica leads (see leaderclient.go).
	client.Client
	*notifier
	store *artifactStore

	ControllerName string
	// ArchiveMaxSize and ArchiveMaxEntries bound an extracted layer like
	// any other source; zero is unbounded.
	ArchiveMaxSize    int64
	ArchiveMaxEntries int
	// LayerMaxSize bounds the compressed size of the selected layer;
	// zero is ArchiveMaxSize when that is set, else DefaultOCILayerMaxSize.
	LayerMaxSize int64
}

// ociState is what the sub-reconcilers of one reconcile share.
type ociState struct {
	// dir is the temporary working directory; the layer is extracted
	// into its content directory or copied into its layer file.
	dir string
	// pulled is what reconcileSource resolved and fetched.
	pulled *ociPulled
}

// contentDir is where an extracted layer goes.
func (s *ociState) contentDir() string { return filepath.Join(s.dir, "content") }

// layerFile is where a copied layer goes.
func (s *ociState) layerFile() string { return filepath.Join(s.dir, "layer.tgz") }

type ociStep = step[*sourcev1.OCIRepository, ociState]

// SetupWithManager registers the reconciler, triggered by spec changes
// and by the reconcile.fluxcd.io/requestedAt annotation.
func (r *OCIRepositoryReconciler) SetupWithManager(mgr ctrl.Manager, concurrent int) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&sourcev1.OCIRepository{}, builder.WithPredicates(
			predicate.Or(predicate.GenerationChangedPredicate{}, predicates.ReconcileRequestedPredicate{}),
		)).
		WithOptions(controller.Options{MaxConcurrentReconciles: concurrent}).
		Complete(r)
}

// layerMaxSize is the effective bound on the compressed layer.
func (r *OCIRepositoryReconciler) layerMaxSize() int64 {
	switch {
	case r.LayerMaxSize > 0:
		return r.LayerMaxSize
	case r.ArchiveMaxSize > 0:
		return r.ArchiveMaxSize
	}
	return DefaultOCILayerMaxSize
}

// Reconcile handles fetch, deletion, the finalizer and suspension, then
// runs the sub-reconcilers; summarizeAndPatch ends every path.
func (r *OCIRepositoryReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	start := time.Now()
	obj := &sourcev1.OCIRepository{}
	if err := r.Get(ctx, req.NamespacedName, obj); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	sp := patch.NewSerialPatcher(obj, r.Client)

	var res Result
	defer func() {
		result, retErr = r.summarizeAndPatch(ctx, obj, sp, ociRepositoryConditions, res, retErr)
		recordDuration(sourcev1.OCIRepositoryKind, obj, start)
	}()

	if !obj.DeletionTimestamp.IsZero() {
		res, retErr = r.reconcileDelete(ctx, obj)
		return
	}
	// Add the finalizer before anything is stored, so no artifact can
	// outlive its object.
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

// reconcile marks the object as progressing, runs the sub-reconcilers in a
// fresh working directory and records the events of the outcome.
func (r *OCIRepositoryReconciler) reconcile(ctx context.Context, sp *patch.SerialPatcher, obj *sourcev1.OCIRepository) (Result, error) {
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

	dir, err := os.MkdirTemp("", "ocirepository-"+obj.Namespace+"-"+obj.Name+"-")
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

	st := &ociState{dir: dir}
	res, err := runSteps(ctx, sp, obj, st, []ociStep{
		r.reconcileStorage,
		r.reconcileSource,
		r.reconcileArtifact,
	})
	if err == nil && res == ResultSuccess && obj.GetArtifact() != nil {
		r.notifySuccess(ctx, oldObj, obj, ociRepositoryFailConditions, ociArtifactMessage(obj))
	}
	return res, err
}

func (r *OCIRepositoryReconciler) patchOptions() []patch.Option {
	return []patch.Option{
		patch.WithOwnedConditions{Conditions: ociRepositoryConditions.Owned},
		patch.WithFieldOwner(r.ControllerName),
	}
}

// reconcileStorage checks that the artifact in the status is still in the
// store, dropping it from the status when it is not, and keeps its URLs on
// the current advertised address.
//
// Sets Reconciling and Ready=Unknown when there is no artifact; removes
// ArtifactInStorage then.
func (r *OCIRepositoryReconciler) reconcileStorage(ctx context.Context, sp *patch.SerialPatcher, obj *sourcev1.OCIRepository, _ *ociState) (Result, error) {
	var missing bool
	if cur := obj.GetArtifact(); cur != nil {
		a, err := fromStatus(cur)
		if err == nil {
			var ok bool
			ok, err = r.store.Exists(ctx, a)
			missing = err == nil && !ok
		}
		if err != nil {
			e := NewGeneric(fmt.Errorf("failed to check the artifact in storage: %w", err), sourcev1.StatOperationFailedReason)
			conditions.MarkTrue(obj, sourcev1.StorageOperationFailedCondition, e.Reason, "%s", e)
			return ResultEmpty, e
		}
		if missing {
			obj.Status.Artifact, obj.Status.URL = nil, ""
		} else {
			cur.URL = a.URL(r.store.advAddr)
			obj.Status.URL = cur.URL
		}
	}
	if obj.GetArtifact() == nil {
		msg := "building artifact"
		if missing {
			msg += ": disappeared from storage"
		}
		rreconcile.ProgressiveStatus(true, obj, meta.ProgressingReason, "%s", msg)
		conditions.Delete(obj, sourcev1.ArtifactInStorageCondition)
		if err := sp.Patch(ctx, obj, r.patchOptions()...); err != nil {
			return ResultEmpty, NewGeneric(err, sourcev1.PatchOperationFailedReason)
		}
	}
	return ResultSuccess, nil
}

// reconcileSource resolves spec.ref to a manifest digest and, unless the
// stored artifact already has that revision and content configuration,
// pulls the selected layer into the working directory (extracted, or as
// it is for the copy operation).
//
// Sets FetchFailed (invalid URL, reference or unsupported field: also
// Stalled; missing secret, registry failures, no matching layer) and
// BuildFailed (the layer is over a size limit); removes both on success.
// Sets ArtifactOutdated, Reconciling and Ready=Unknown when the revision
// or the content configuration differs from the stored artifact's.
func (r *OCIRepositoryReconciler) reconcileSource(ctx context.Context, sp *patch.SerialPatcher, obj *sourcev1.OCIRepository, st *ociState) (Result, error) {
	fail := func(e *Error) (Result, error) {
		conditions.MarkTrue(obj, sourcev1.FetchFailedCondition, e.Reason, "%s", e)
		return ResultEmpty, e
	}
	if err := unsupportedOCISpec(obj); err != nil {
		return fail(NewStalling(err, UnsupportedFieldReason))
	}
	repo, err := parseOCIURL(obj.Spec.URL, obj.Spec.Insecure)
	if err != nil {
		return fail(NewStalling(fmt.Errorf("URL validation failed for '%s': %w", obj.Spec.URL, err), sourcev1.URLInvalidReason))
	}
	if op := obj.GetLayerOperation(); op != sourcev1.OCILayerExtract && op != sourcev1.OCILayerCopy {
		return fail(NewStalling(fmt.Errorf("unsupported layer operation: %s", op), sourcev1.OCILayerOperationFailedReason))
	}

	timeout := defaultOCITimeout
	if obj.Spec.Timeout != nil && obj.Spec.Timeout.Duration > 0 {
		timeout = obj.Spec.Timeout.Duration
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	rem, err := r.ociRemote(rctx, obj)
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			e = NewGeneric(err, sourcev1.AuthenticationFailedReason)
		}
		return fail(e)
	}

	ref, err := rem.resolve(repo, obj.Spec.Reference)
	if err != nil {
		switch {
		case errors.Is(err, errInvalidRef):
			return fail(NewStalling(err, sourcev1.OCIPullFailedReason))
		case errors.Is(err, errOCIList):
			return fail(NewGeneric(fmt.Errorf("failed to determine the artifact tag for '%s': %w", obj.Spec.URL, err), sourcev1.ReadOperationFailedReason))
		}
		return fail(NewGeneric(fmt.Errorf("failed to determine artifact digest: %w", err), sourcev1.OCIPullFailedReason))
	}
	st.pulled = &ociPulled{ref: ref}
	revision := ref.revision()

	// Skip pulling if the revision and the content configuration have not
	// changed.
	if obj.GetArtifact().HasRevision(revision) && !ociContentConfigChanged(obj) {
		conditions.Delete(obj, sourcev1.FetchFailedCondition)
		conditions.Delete(obj, sourcev1.BuildFailedCondition)
		return ResultSuccess, nil
	}

	why := fmt.Sprintf("new revision '%s' for '%s'", revision, ref.display)
	if obj.GetArtifact().HasRevision(revision) {
		why = "content configuration differs from the last stored artifact"
	}
	if obj.GetArtifact() != nil {
		conditions.MarkTrue(obj, sourcev1.ArtifactOutdatedCondition, "NewRevision", "%s", why)
	}
	rreconcile.ProgressiveStatus(true, obj, meta.ProgressingReason, "building artifact: %s", why)
	if err := sp.Patch(ctx, obj, r.patchOptions()...); err != nil {
		return ResultEmpty, NewGeneric(err, sourcev1.PatchOperationFailedReason)
	}

	lim := ociLimits{layer: r.layerMaxSize(), untar: r.ArchiveMaxSize, entries: r.ArchiveMaxEntries}
	pulled, err := rem.pull(ref, obj.GetLayerMediaType(), obj.GetLayerOperation(), st, lim)
	if err != nil {
		var limit *archive.LimitError
		if errors.As(err, &limit) {
			e := NewGeneric(fmt.Errorf("layer of revision '%s' is too large: %w", revision, err), ArchiveLimitReason)
			conditions.MarkTrue(obj, sourcev1.BuildFailedCondition, e.Reason, "%s", e)
			conditions.Delete(obj, sourcev1.FetchFailedCondition)
			return ResultEmpty, e
		}
		var e *Error
		if !errors.As(err, &e) {
			e = NewGeneric(fmt.Errorf("failed to pull artifact from '%s': %w", obj.Spec.URL, err), sourcev1.OCIPullFailedReason)
		}
		return fail(e)
	}
	st.pulled = pulled
	conditions.Delete(obj, sourcev1.FetchFailedCondition)
	ctrl.LoggerFrom(ctx).V(1).Info("oci artifact pulled", "url", obj.Spec.URL, "revision", revision)
	return ResultSuccess, nil
}

// reconcileArtifact stores the pulled layer as a new artifact unless the
// stored one already has this revision and content configuration, then
// records it in the status and collects superseded artifacts.
//
// Sets BuildFailed (ignore rules or archive limits) and
// StorageOperationFailed (the store refused the artifact); removes both
// and ArtifactOutdated on success, and sets ArtifactInStorage=True when
// the status names an artifact of the resolved revision.
func (r *OCIRepositoryReconciler) reconcileArtifact(ctx context.Context, _ *patch.SerialPatcher, obj *sourcev1.OCIRepository, st *ociState) (Result, error) {
	revision := st.pulled.ref.revision()
	upToDate := func() bool { return obj.GetArtifact().HasRevision(revision) && !ociContentConfigChanged(obj) }
	defer func() {
		if upToDate() {
			conditions.Delete(obj, sourcev1.ArtifactOutdatedCondition)
			conditions.MarkTrue(obj, sourcev1.ArtifactInStorageCondition, meta.SucceededReason,
				"stored artifact for digest '%s'", revision)
		}
	}()
	if upToDate() {
		r.AnnotatedEventf(obj, artifactAnnotations(obj.GetArtifact()), eventv1.EventTypeTrace, sourcev1.ArtifactUpToDateReason,
			"artifact up-to-date with remote revision: '%s'", revision)
		return ResultSuccess, nil
	}

	// Flux names the file after the manifest digest, 'sha256:<hex>.tar.gz',
	// for both operations.
	art := newArtifactFor(sourcev1.OCIRepositoryKind, obj, revision, st.pulled.ref.digest.String()+".tar.gz")
	art.Metadata = st.pulled.annotations

	var err error
	switch obj.GetLayerOperation() {
	case sourcev1.OCILayerCopy:
		err = r.storeLayerFile(ctx, &art, st.layerFile(), st.pulled.layerDigest)
	default:
		var filter archive.Filter
		filter, err = archive.IgnoreFilter(st.contentDir(), obj.Spec.Ignore)
		if err != nil {
			e := NewGeneric(fmt.Errorf("failed to load source ignore patterns from artifact: %w", err), "SourceIgnoreError")
			conditions.MarkTrue(obj, sourcev1.BuildFailedCondition, e.Reason, "%s", e)
			return ResultEmpty, e
		}
		err = r.store.storeDir(ctx, &art, st.contentDir(), archive.Options{Filter: filter, MaxSize: r.ArchiveMaxSize, MaxEntries: r.ArchiveMaxEntries})
	}
	var limit *archive.LimitError
	switch {
	case errors.As(err, &limit):
		e := NewGeneric(fmt.Errorf("layer of revision '%s' is too large: %w", revision, limit), ArchiveLimitReason)
		conditions.MarkTrue(obj, sourcev1.BuildFailedCondition, e.Reason, "%s", e)
		return ResultEmpty, e
	case errors.Is(err, errArchive):
		e := NewGeneric(fmt.Errorf("failed to archive revision '%s': %w", revision, err), sourcev1.ArchiveOperationFailedReason)
		conditions.MarkTrue(obj, sourcev1.BuildFailedCondition, e.Reason, "%s", e)
		return ResultEmpty, e
	case err != nil:
		e := NewGeneric(fmt.Errorf("failed to store artifact of revision '%s': %w", revision, err), StoreFailedReason)
		conditions.MarkTrue(obj, sourcev1.StorageOperationFailedCondition, e.Reason, "%s", e)
		return ResultEmpty, e
	}
	conditions.Delete(obj, sourcev1.BuildFailedCondition)
	conditions.Delete(obj, sourcev1.StorageOperationFailedCondition)

	// The artifact is committed: only now may the status name it.
	obj.Status.Artifact = r.store.toStatus(art)
	obj.Status.URL = obj.Status.Artifact.URL
	obj.Status.ObservedIgnore = obj.Spec.Ignore
	obj.Status.ObservedLayerSelector = obj.Spec.LayerSelector.DeepCopy()

	if err := r.store.collectGarbage(ctx, art); err != nil {
		r.AnnotatedEventf(obj, nil, corev1.EventTypeWarning, GarbageCollectionFailedReason,
			"garbage collection of superseded artifacts failed: %s", err)
	}
	return ResultSuccess, nil
}

// storeLayerFile streams a copied layer into the store, which checks it
// hashes to the layer digest.
func (r *OCIRepositoryReconciler) storeLayerFile(ctx context.Context, art *storage.Artifact, path, digest string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%w: %w", errArchive, err)
	}
	defer f.Close()
	art.Digest = digest
	return r.store.Store(ctx, art, f)
}

// reconcileDelete removes every artifact of the object from the store,
// then the finalizer. A failure keeps the finalizer and is retried.
func (r *OCIRepositoryReconciler) reconcileDelete(ctx context.Context, obj *sourcev1.OCIRepository) (Result, error) {
	n, err := r.store.deleteAll(ctx, sourcev1.OCIRepositoryKind, obj)
	if err != nil {
		return ResultEmpty, NewGeneric(fmt.Errorf("garbage collection for deleted resource failed: %w", err), GarbageCollectionFailedReason)
	}
	if n > 0 {
		r.AnnotatedEventf(obj, nil, eventv1.EventTypeTrace, GarbageCollectionSucceededReason,
			"garbage collected %d artifacts for deleted resource", n)
	}
	obj.Status.Artifact, obj.Status.URL = nil, ""
	controllerutil.RemoveFinalizer(obj, sourcev1.SourceFinalizer)
	forgetDuration(sourcev1.OCIRepositoryKind, obj)
	return ResultEmpty, nil
}

// ociContentConfigChanged reports whether the spec fields that shape the
// artifact's content differ from those the stored artifact was built with.
func ociContentConfigChanged(obj *sourcev1.OCIRepository) bool {
	return !equalStringPtr(obj.Spec.Ignore, obj.Status.ObservedIgnore) ||
		!equalLayerSelector(obj.Spec.LayerSelector, obj.Status.ObservedLayerSelector)
}

func equalLayerSelector(a, b *sourcev1.OCILayerSelector) bool {
	return (a == nil && b == nil) || (a != nil && b != nil && *a == *b)
}

// ociArtifactMessage is the event message of a stored artifact, with the
// origin source and revision when the artifact's annotations carry them
// (as `flux push artifact` writes them).
func ociArtifactMessage(obj *sourcev1.OCIRepository) string {
	a := obj.GetArtifact()
	msg := fmt.Sprintf("stored artifact with revision '%s' from '%s'", a.Revision, obj.Spec.URL)
	if src, rev := a.Metadata[ociSourceAnnotation], a.Metadata[ociRevisionAnnotation]; src != "" && rev != "" {
		msg += fmt.Sprintf(", origin source '%s', origin revision '%s'", src, rev)
	}
	return msg
}

// unsupportedOCISpec names the spec fields this build cannot honour. They
// stall the object instead of being ignored: ignoring spec.verify would
// publish unverified artifacts, and ignoring a proxy, a cloud provider or
// a service account would pull by another route or as another identity
// than asked for.
func unsupportedOCISpec(obj *sourcev1.OCIRepository) error {
	var fields []string
	if obj.Spec.Verify != nil {
		fields = append(fields, "spec.verify")
	}
	if p := obj.Spec.Provider; p != "" && p != sourcev1.GenericOCIProvider {
		fields = append(fields, "spec.provider '"+p+"'")
	}
	if obj.Spec.ProxySecretRef != nil {
		fields = append(fields, "spec.proxySecretRef")
	}
	if obj.Spec.ServiceAccountName != "" {
		fields = append(fields, "spec.serviceAccountName")
	}
	if len(fields) == 0 {
		return nil
	}
	return fmt.Errorf("not supported by sourceraft yet: %s", strings.Join(fields, ", "))
}
