package reconcilers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/cache"
	"github.com/fluxcd/pkg/runtime/conditions"
	"github.com/fluxcd/pkg/runtime/patch"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"github.com/opencontainers/go-digest"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sourceraft/sourceraft/archive"
	bucketsrc "github.com/sourceraft/sourceraft/sources/bucket"
)

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
	// DigestAlgorithm is the revision's, Flux's --artifact-digest-algo.
	DigestAlgorithm digest.Algorithm
	// TokenCache keeps cloud provider credentials; nil is no caching.
	TokenCache *cache.TokenCache
}

// bucketState is what the sub-reconcilers of one reconcile share.
type bucketState struct {
	// dir is the temporary directory the objects are downloaded into.
	dir string
	// index is the bucket's key → ETag index, set by reconcileSource.
	index *bucketsrc.Index
}

type bucketStep = step[*sourcev1.Bucket, bucketState]

// bucketKind is Bucket to the shared reconcile flow.
var bucketKind = sourceKind[*sourcev1.Bucket]{
	name:                   sourcev1.BucketKind,
	conds:                  bucketConditions,
	newObject:              func() *sourcev1.Bucket { return &sourcev1.Bucket{} },
	suspended:              func(o *sourcev1.Bucket) bool { return o.Spec.Suspend },
	observedGeneration:     func(o *sourcev1.Bucket) int64 { return o.Status.ObservedGeneration },
	lastHandledReconcileAt: func(o *sourcev1.Bucket) string { return o.Status.GetLastHandledReconcileRequest() },
	setArtifact:            func(o *sourcev1.Bucket, a *meta.Artifact) { o.Status.Artifact, o.Status.URL = a, statusURL(a) },
}

// SetupWithManager registers the reconciler, triggered by spec changes
// and by the reconcile.fluxcd.io/requestedAt annotation.
func (r *BucketReconciler) SetupWithManager(mgr ctrl.Manager, concurrent int) error {
	return setupSource(mgr, &sourcev1.Bucket{}, concurrent, r)
}

// Reconcile runs the shared flow (source.go) in a fresh download
// directory: reconcileStorage, then reconcileSource and reconcileArtifact.
func (r *BucketReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	f := &sourceReconcile[*sourcev1.Bucket, bucketState]{
		kind: &bucketKind, client: r.Client, notifier: r.notifier, store: r.store, fieldOwner: r.ControllerName,
		workDir:  true,
		newState: func(dir string) *bucketState { return &bucketState{dir: dir} },
		steps:    []bucketStep{r.reconcileSource, r.reconcileArtifact},
		notify: func(ctx context.Context, oldObj, obj *sourcev1.Bucket, st *bucketState) {
			if st.index != nil {
				r.notifySuccess(ctx, oldObj, obj, bucketConditions,
					fmt.Sprintf("stored artifact with %d fetched files from '%s' bucket", st.index.Len(), obj.Spec.BucketName))
			}
		},
	}
	return f.reconcile(ctx, req)
}

// reconcileSource indexes the bucket (keys and ETags of the objects the
// ignore rules keep) and, when the index differs from the stored
// artifact's revision, downloads the objects into the working directory.
//
// Sets FetchFailed (unsupported provider or field, invalid endpoint: also
// Stalled; missing or invalid secret or proxy secret, S3 errors, a
// missing bucket, a limit exceeded, an unsafe object key); removes it on
// success. Sets ArtifactOutdated, Reconciling and Ready=Unknown when the
// revision differs from the stored artifact's.
func (r *BucketReconciler) reconcileSource(ctx context.Context, sp *patch.SerialPatcher, obj *sourcev1.Bucket, st *bucketState) (Result, error) {
	if err := unsupportedBucketSpec(obj); err != nil {
		return fetchFailed(obj, NewStalling(err, UnsupportedFieldReason))
	}
	if err := bucketsrc.ValidateEndpoint(obj.Spec.Endpoint); err != nil {
		return fetchFailed(obj, NewStalling(err, sourcev1.URLInvalidReason))
	}

	opts := bucketsrc.S3Options{
		Endpoint: obj.Spec.Endpoint, Region: obj.Spec.Region, Insecure: obj.Spec.Insecure,
		IAM: obj.Spec.Provider == sourcev1.BucketProviderAmazon,
	}
	if ref := obj.Spec.SecretRef; ref != nil {
		s := &corev1.Secret{}
		if err := r.Get(ctx, types.NamespacedName{Namespace: obj.Namespace, Name: ref.Name}, s); err != nil {
			return fetchFailed(obj, NewGeneric(fmt.Errorf("failed to get secret '%s/%s': %w", obj.Namespace, ref.Name, err), sourcev1.AuthenticationFailedReason))
		}
		if len(s.Data["accesskey"]) == 0 || len(s.Data["secretkey"]) == 0 {
			return fetchFailed(obj, NewGeneric(fmt.Errorf("invalid '%s' secret data: required fields 'accesskey' and 'secretkey'", ref.Name), sourcev1.AuthenticationFailedReason))
		}
		opts.AccessKey, opts.SecretKey = string(s.Data["accesskey"]), string(s.Data["secretkey"])
	}
	proxy, err := proxyFromSecretRef(ctx, r.Client, obj.Namespace, obj.Spec.ProxySecretRef)
	if err != nil {
		return fetchFailed(obj, NewGeneric(fmt.Errorf("failed to get proxy URL: %w", err), sourcev1.AuthenticationFailedReason))
	}
	opts.Proxy = proxy
	c, err := bucketsrc.NewS3(opts)
	if err != nil {
		return fetchFailed(obj, NewGeneric(fmt.Errorf("failed to create the S3 client: %w", err), sourcev1.AuthenticationFailedReason))
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
		case errors.Is(err, bucketsrc.ErrLimit):
			return fetchFailed(obj, NewGeneric(err, ArchiveLimitReason))
		case errors.Is(err, bucketsrc.ErrObjectKey):
			return fetchFailed(obj, NewGeneric(err, InvalidObjectKeyReason))
		}
		return fetchFailed(obj, NewGeneric(err, sourcev1.BucketOperationFailedReason))
	}
	if err := bucketsrc.CheckExists(fetchCtx, c, obj.Spec.BucketName); err != nil {
		return fetchErr(err)
	}
	filter, err := bucketsrc.IgnoreFilter(fetchCtx, c, obj.Spec.BucketName, obj.Spec.Ignore, limits.MaxObjectSize)
	if err != nil {
		return fetchErr(err)
	}
	idx, err := bucketsrc.List(fetchCtx, c, obj.Spec.BucketName, obj.Spec.Prefix, filter, limits)
	if err != nil {
		return fetchErr(err)
	}

	cur := obj.GetArtifact()
	if rev := idx.Revision(r.DigestAlgorithm); !cur.HasRevision(rev) {
		if err := bucketsrc.Download(fetchCtx, c, obj.Spec.BucketName, idx, st.dir, limits); err != nil {
			return fetchErr(err)
		}
		// The revision of what was downloaded: objects may have changed
		// since they were listed.
		why := fmt.Sprintf("new upstream revision '%s'", idx.Revision(r.DigestAlgorithm))
		if err := bucketKind.markOutdated(ctx, sp, obj, r.ControllerName, why); err != nil {
			return ResultEmpty, err
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
	revision := st.index.Revision(r.DigestAlgorithm)
	defer func() {
		if obj.GetArtifact().HasRevision(revision) {
			conditions.Delete(obj, sourcev1.ArtifactOutdatedCondition)
			conditions.MarkTrue(obj, sourcev1.ArtifactInStorageCondition, meta.SucceededReason,
				"stored artifact: revision '%s'", revision)
		}
	}()
	if obj.GetArtifact().HasRevision(revision) {
		r.notifyUpToDate(obj, revision)
		return ResultSuccess, nil
	}

	art := newArtifactFor(sourcev1.BucketKind, obj, revision, digest.Digest(revision).Encoded()+".tar.gz")
	err := r.store.storeDir(ctx, &art, st.dir, archive.Options{MaxSize: r.ArchiveMaxSize, MaxEntries: r.ArchiveMaxEntries})
	if err != nil {
		return ResultEmpty, storeFailed(obj, err, revision, "bucket content", sourcev1.StorageOperationFailedCondition)
	}
	conditions.Delete(obj, sourcev1.StorageOperationFailedCondition)

	// The artifact is committed: only now may the status name it.
	bucketKind.setArtifact(obj, r.store.toStatus(art))
	obj.Status.ObservedIgnore = obj.Spec.Ignore

	return ResultSuccess, nil
}

// limits are the fetch limits of one reconcile.
func (r *BucketReconciler) limits() bucketsrc.Limits {
	l := bucketsrc.Limits{MaxSize: r.ArchiveMaxSize, MaxObjectSize: r.MaxObjectSize, MaxEntries: r.ArchiveMaxEntries}
	if l.MaxObjectSize <= 0 {
		l.MaxObjectSize = l.MaxSize
	}
	return l
}

// unsupportedBucketSpec names the providers and spec fields this build
// cannot honour. They stall the object instead of being ignored: ignoring
// a client certificate, STS or a service account would fetch as another
// identity than asked for.
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
	if obj.Spec.ServiceAccountName != "" {
		fields = append(fields, "spec.serviceAccountName")
	}
	return notSupported(fields)
}
