package reconcilers

import (
	"context"
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
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	"github.com/sourceraft/sourceraft/archive"
)

// bucketConditions is the condition set of Bucket (Flux's: no
// BuildFailed or IncludeUnavailable). It sits here rather than in
// conditions.go only because this file was written alongside other kinds.
var bucketConditions = rreconcile.Conditions{
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

// bucketFailConditions are the conditions whose removal after a failure
// is a recovery worth an event.
var bucketFailConditions = []string{
	sourcev1.FetchFailedCondition,
	sourcev1.StorageOperationFailedCondition,
}

// InvalidObjectKeyReason: the bucket holds an object whose key cannot be
// written as a file inside the artifact.
const InvalidObjectKeyReason = "InvalidObjectKey"

// defaultBucketTimeout bounds bucket operations when spec.timeout is unset
// (the CRD defaults it to the same value).
const defaultBucketTimeout = 60 * time.Second

// BucketReconciler reconciles source.toolkit.fluxcd.io/v1 Bucket objects
// of the generic and aws providers (the S3 API, through minio-go) into
// tar.gz artifacts in the replicated store.
type BucketReconciler struct {
	// Client writes only while this replica leads (see leaderclient.go).
	client.Client
	*notifier
	store *artifactStore

	ControllerName string
	// ArchiveMaxSize bounds the sum of the fetched objects' sizes and
	// ArchiveMaxEntries the files and directories they make, as for every
	// archive; zero is unbounded.
	ArchiveMaxSize    int64
	ArchiveMaxEntries int
	// MaxObjectSize bounds each object; zero means ArchiveMaxSize.
	MaxObjectSize int64
}

// bucketState is what the sub-reconcilers of one reconcile share.
type bucketState struct {
	// dir is the temporary directory the objects are downloaded into.
	dir string
	// index is the bucket's key → ETag index, set by reconcileSource.
	index *bucketIndex
}

type bucketStep = step[*sourcev1.Bucket, bucketState]

// SetupWithManager registers the reconciler, triggered by spec changes
// and by the reconcile.fluxcd.io/requestedAt annotation.
func (r *BucketReconciler) SetupWithManager(mgr ctrl.Manager, concurrent int) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&sourcev1.Bucket{}, builder.WithPredicates(
			predicate.Or(predicate.GenerationChangedPredicate{}, predicates.ReconcileRequestedPredicate{}),
		)).
		WithOptions(controller.Options{MaxConcurrentReconciles: concurrent}).
		Complete(r)
}

// Reconcile handles fetch, deletion, the finalizer and suspension, then
// runs the sub-reconcilers; summarizeAndPatch ends every path.
func (r *BucketReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	start := time.Now()
	obj := &sourcev1.Bucket{}
	if err := r.Get(ctx, req.NamespacedName, obj); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	sp := patch.NewSerialPatcher(obj, r.Client)

	var res Result
	defer func() {
		result, retErr = r.summarizeAndPatch(ctx, obj, sp, bucketConditions, res, retErr)
		recordDuration(sourcev1.BucketKind, obj, start)
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
// fresh download directory and records the events of the outcome.
func (r *BucketReconciler) reconcile(ctx context.Context, sp *patch.SerialPatcher, obj *sourcev1.Bucket) (Result, error) {
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

	dir, err := os.MkdirTemp("", "bucket-"+obj.Namespace+"-"+obj.Name+"-")
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

	st := &bucketState{dir: dir}
	res, err := runSteps(ctx, sp, obj, st, []bucketStep{
		r.reconcileStorage,
		r.reconcileSource,
		r.reconcileArtifact,
	})
	if err == nil && res == ResultSuccess && st.index != nil {
		r.notifySuccess(ctx, oldObj, obj, bucketFailConditions,
			fmt.Sprintf("stored artifact with %d fetched files from '%s' bucket", st.index.Len(), obj.Spec.BucketName))
	}
	return res, err
}

func (r *BucketReconciler) patchOptions() []patch.Option {
	return []patch.Option{
		patch.WithOwnedConditions{Conditions: bucketConditions.Owned},
		patch.WithFieldOwner(r.ControllerName),
	}
}

// reconcileStorage checks that the artifact in the status is still in the
// store, dropping it from the status when it is not, and keeps its URLs on
// the current advertised address.
//
// Sets Reconciling and Ready=Unknown when there is no artifact; removes
// ArtifactInStorage then.
func (r *BucketReconciler) reconcileStorage(ctx context.Context, sp *patch.SerialPatcher, obj *sourcev1.Bucket, _ *bucketState) (Result, error) {
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

// reconcileSource indexes the bucket (keys and ETags of the objects the
// ignore rules keep) and, when the index differs from the stored
// artifact's revision, downloads the objects into the working directory.
//
// Sets FetchFailed (unsupported provider or field, invalid endpoint: also
// Stalled; missing or invalid secret, S3 errors, a missing bucket, a limit
// exceeded, an unsafe object key); removes it on success. Sets
// ArtifactOutdated, Reconciling and Ready=Unknown when the revision
// differs from the stored artifact's.
func (r *BucketReconciler) reconcileSource(ctx context.Context, sp *patch.SerialPatcher, obj *sourcev1.Bucket, st *bucketState) (Result, error) {
	fail := func(e *Error) (Result, error) {
		conditions.MarkTrue(obj, sourcev1.FetchFailedCondition, e.Reason, "%s", e)
		return ResultEmpty, e
	}
	if err := unsupportedBucketSpec(obj); err != nil {
		return fail(NewStalling(err, UnsupportedFieldReason))
	}
	if err := validateBucketEndpoint(obj.Spec.Endpoint); err != nil {
		return fail(NewStalling(err, sourcev1.URLInvalidReason))
	}

	var secret map[string][]byte
	if ref := obj.Spec.SecretRef; ref != nil {
		s := &corev1.Secret{}
		if err := r.Get(ctx, types.NamespacedName{Namespace: obj.Namespace, Name: ref.Name}, s); err != nil {
			return fail(NewGeneric(fmt.Errorf("failed to get secret '%s/%s': %w", obj.Namespace, ref.Name, err), sourcev1.AuthenticationFailedReason))
		}
		if len(s.Data["accesskey"]) == 0 || len(s.Data["secretkey"]) == 0 {
			return fail(NewGeneric(fmt.Errorf("invalid '%s' secret data: required fields 'accesskey' and 'secretkey'", ref.Name), sourcev1.AuthenticationFailedReason))
		}
		secret = s.Data
	}
	c, err := newS3Client(obj, secret)
	if err != nil {
		return fail(NewGeneric(fmt.Errorf("failed to create the S3 client: %w", err), "ClientError"))
	}

	timeout := defaultBucketTimeout
	if obj.Spec.Timeout != nil && obj.Spec.Timeout.Duration > 0 {
		timeout = obj.Spec.Timeout.Duration
	}
	fetchCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	limits := r.limits()

	fetchErr := func(err error) (Result, error) {
		switch {
		case errors.Is(err, errBucketLimit):
			return fail(NewGeneric(err, ArchiveLimitReason))
		case errors.Is(err, errObjectKey):
			return fail(NewGeneric(err, InvalidObjectKeyReason))
		}
		return fail(NewGeneric(err, sourcev1.BucketOperationFailedReason))
	}
	if err := checkBucketExists(fetchCtx, c, obj.Spec.BucketName); err != nil {
		return fetchErr(err)
	}
	filter, err := bucketIgnoreFilter(fetchCtx, c, obj.Spec.BucketName, obj.Spec.Ignore, limits.MaxObjectSize)
	if err != nil {
		return fetchErr(err)
	}
	idx, err := indexBucket(fetchCtx, c, obj.Spec.BucketName, obj.Spec.Prefix, filter, limits)
	if err != nil {
		return fetchErr(err)
	}

	cur := obj.GetArtifact()
	if rev := idx.revision(); !cur.HasRevision(rev) {
		if err := downloadBucket(fetchCtx, c, obj.Spec.BucketName, idx, st.dir, limits); err != nil {
			return fetchErr(err)
		}
		// The revision of what was downloaded: objects may have changed
		// since they were listed.
		why := fmt.Sprintf("new upstream revision '%s'", idx.revision())
		if cur != nil {
			conditions.MarkTrue(obj, sourcev1.ArtifactOutdatedCondition, "NewRevision", "%s", why)
		}
		rreconcile.ProgressiveStatus(true, obj, meta.ProgressingReason, "building artifact: %s", why)
		if err := sp.Patch(ctx, obj, r.patchOptions()...); err != nil {
			return ResultEmpty, NewGeneric(err, sourcev1.PatchOperationFailedReason)
		}
	}
	st.index = idx
	conditions.Delete(obj, sourcev1.FetchFailedCondition)
	ctrl.LoggerFrom(ctx).V(1).Info("bucket indexed", "bucket", obj.Spec.BucketName, "objects", idx.Len())
	return ResultSuccess, nil
}

// reconcileArtifact archives the downloaded objects into a new artifact
// unless the stored one already has the index's revision, then records it
// in the status and collects superseded artifacts.
//
// Sets StorageOperationFailed (the archive could not be built or the
// store refused it); removes it and ArtifactOutdated on success, and sets
// ArtifactInStorage=True when the status names an artifact of the
// bucket's revision.
func (r *BucketReconciler) reconcileArtifact(ctx context.Context, _ *patch.SerialPatcher, obj *sourcev1.Bucket, st *bucketState) (Result, error) {
	revision := st.index.revision()
	defer func() {
		if obj.GetArtifact().HasRevision(revision) {
			conditions.Delete(obj, sourcev1.ArtifactOutdatedCondition)
			conditions.MarkTrue(obj, sourcev1.ArtifactInStorageCondition, meta.SucceededReason,
				"stored artifact: revision '%s'", revision)
		}
	}()
	if obj.GetArtifact().HasRevision(revision) {
		r.AnnotatedEventf(obj, artifactAnnotations(obj.GetArtifact()), eventv1.EventTypeTrace, sourcev1.ArtifactUpToDateReason,
			"artifact up-to-date with remote revision: '%s'", revision)
		return ResultSuccess, nil
	}

	art := newArtifactFor(sourcev1.BucketKind, obj, revision, strings.TrimPrefix(revision, "sha256:")+".tar.gz")
	err := r.store.storeDir(ctx, &art, st.dir, archive.Options{MaxSize: r.ArchiveMaxSize, MaxEntries: r.ArchiveMaxEntries})
	var limit *archive.LimitError
	switch {
	case errors.As(err, &limit):
		e := NewGeneric(fmt.Errorf("objects of revision '%s' are too large to archive: %w", revision, limit), ArchiveLimitReason)
		conditions.MarkTrue(obj, sourcev1.StorageOperationFailedCondition, e.Reason, "%s", e)
		return ResultEmpty, e
	case errors.Is(err, errArchive):
		e := NewGeneric(fmt.Errorf("unable to archive artifact of revision '%s': %w", revision, err), sourcev1.ArchiveOperationFailedReason)
		conditions.MarkTrue(obj, sourcev1.StorageOperationFailedCondition, e.Reason, "%s", e)
		return ResultEmpty, e
	case err != nil:
		e := NewGeneric(fmt.Errorf("failed to store artifact of revision '%s': %w", revision, err), StoreFailedReason)
		conditions.MarkTrue(obj, sourcev1.StorageOperationFailedCondition, e.Reason, "%s", e)
		return ResultEmpty, e
	}
	conditions.Delete(obj, sourcev1.StorageOperationFailedCondition)

	// The artifact is committed: only now may the status name it.
	obj.Status.Artifact = r.store.toStatus(art)
	obj.Status.URL = obj.Status.Artifact.URL
	obj.Status.ObservedIgnore = obj.Spec.Ignore

	if err := r.store.collectGarbage(ctx, art); err != nil {
		r.AnnotatedEventf(obj, nil, corev1.EventTypeWarning, GarbageCollectionFailedReason,
			"garbage collection of superseded artifacts failed: %s", err)
	}
	return ResultSuccess, nil
}

// reconcileDelete removes every artifact of the object from the store,
// then the finalizer. A failure keeps the finalizer and is retried.
func (r *BucketReconciler) reconcileDelete(ctx context.Context, obj *sourcev1.Bucket) (Result, error) {
	n, err := r.store.deleteAll(ctx, sourcev1.BucketKind, obj)
	if err != nil {
		return ResultEmpty, NewGeneric(fmt.Errorf("garbage collection for deleted resource failed: %w", err), GarbageCollectionFailedReason)
	}
	if n > 0 {
		r.AnnotatedEventf(obj, nil, eventv1.EventTypeTrace, GarbageCollectionSucceededReason,
			"garbage collected %d artifacts for deleted resource", n)
	}
	obj.Status.Artifact, obj.Status.URL = nil, ""
	controllerutil.RemoveFinalizer(obj, sourcev1.SourceFinalizer)
	forgetDuration(sourcev1.BucketKind, obj)
	return ResultEmpty, nil
}

// limits are the fetch limits of one reconcile.
func (r *BucketReconciler) limits() bucketLimits {
	l := bucketLimits{MaxSize: r.ArchiveMaxSize, MaxObjectSize: r.MaxObjectSize, MaxEntries: r.ArchiveMaxEntries}
	if l.MaxObjectSize <= 0 {
		l.MaxObjectSize = l.MaxSize
	}
	return l
}

// unsupportedBucketSpec names the providers and spec fields this build
// cannot honour. They stall the object instead of being ignored: ignoring
// a proxy, a client certificate, STS or a service account would fetch by
// another route or as another identity than asked for.
func unsupportedBucketSpec(obj *sourcev1.Bucket) error {
	var fields []string
	switch p := obj.Spec.Provider; p {
	case "", sourcev1.BucketProviderGeneric, sourcev1.BucketProviderAmazon:
	default:
		fields = append(fields, "spec.provider '"+p+"'")
	}
	if obj.Spec.STS != nil {
		fields = append(fields, "spec.sts")
	}
	if obj.Spec.CertSecretRef != nil {
		fields = append(fields, "spec.certSecretRef")
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

// validateBucketEndpoint accepts what minio-go takes: host[:port], without
// a scheme or a path (spec.insecure chooses http).
func validateBucketEndpoint(endpoint string) error {
	switch {
	case endpoint == "":
		return errors.New("spec.endpoint is empty")
	case strings.Contains(endpoint, "://"):
		return fmt.Errorf("endpoint '%s' must be host[:port] without a scheme (set spec.insecure for plain HTTP)", endpoint)
	case strings.ContainsAny(endpoint, "/?#@ "):
		return fmt.Errorf("endpoint '%s' must be host[:port] without a path", endpoint)
	}
	return nil
}
