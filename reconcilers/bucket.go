package reconcilers

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/url"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/auth"
	awsauth "github.com/fluxcd/pkg/auth/aws"
	azureauth "github.com/fluxcd/pkg/auth/azure"
	gcpauth "github.com/fluxcd/pkg/auth/gcp"
	"github.com/fluxcd/pkg/cache"
	"github.com/fluxcd/pkg/runtime/conditions"
	"github.com/fluxcd/pkg/runtime/patch"
	"github.com/fluxcd/pkg/runtime/secrets"
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
// of the generic and aws providers (the S3 API, through minio-go), the
// gcp provider (Google Cloud Storage) and the azure provider (Azure Blob
// Storage) into tar.gz artifacts in the replicated store.
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
// Sets FetchFailed (the ObjectLevelWorkloadIdentity gate off for
// spec.serviceAccountName, an invalid spec.sts, an unsupported provider or
// field, an invalid endpoint: also Stalled; missing or invalid secrets,
// TLS or proxy, the cloud provider refusing the identity, store errors, a
// missing bucket, a limit exceeded, an unsafe object key); removes it on
// success. Sets ArtifactOutdated, Reconciling and Ready=Unknown when the
// revision differs from the stored artifact's.
func (r *BucketReconciler) reconcileSource(ctx context.Context, sp *patch.SerialPatcher, obj *sourcev1.Bucket, st *bucketState) (Result, error) {
	if usesCloudIdentity(obj) {
		if e := objectLevelIdentityCheck(obj.Spec.ServiceAccountName); e != nil {
			return fetchFailed(obj, e)
		}
	}
	if err := unsupportedBucketSpec(obj); err != nil {
		return fetchFailed(obj, NewStalling(err, UnsupportedFieldReason))
	}
	c, e := r.bucketClient(ctx, obj)
	if e != nil {
		return fetchFailed(obj, e)
	}
	if closer, ok := c.(io.Closer); ok {
		defer closer.Close()
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

// usesCloudIdentity: obj authenticates to a cloud provider with
// spec.serviceAccountName, Flux's condition for the
// ObjectLevelWorkloadIdentity gate (every provider but generic).
func usesCloudIdentity(obj *sourcev1.Bucket) bool {
	p := obj.Spec.Provider
	return p != "" && p != sourcev1.BucketProviderGeneric && obj.Spec.ServiceAccountName != ""
}

// bucketCredentials are what Flux's setupCredentials reads for every
// provider: spec.secretRef, the proxy and the TLS configuration (which
// only the S3 providers use, but a broken one fails them all, as in Flux).
type bucketCredentials struct {
	secret *corev1.Secret
	proxy  *url.URL
	tls    *tls.Config
}

// bucketClient is obj's provider's client, its credentials read as
// Flux's setupCredentials and createBucketProvider do.
func (r *BucketReconciler) bucketClient(ctx context.Context, obj *sourcev1.Bucket) (bucketsrc.Client, *Error) {
	authFailed := func(err error) (bucketsrc.Client, *Error) {
		return nil, NewGeneric(err, sourcev1.AuthenticationFailedReason)
	}
	var creds bucketCredentials
	if ref := obj.Spec.SecretRef; ref != nil {
		s, err := getSecret(ctx, r.Client, obj.Namespace, ref.Name)
		if err != nil {
			return authFailed(err)
		}
		creds.secret = s
	}
	proxy, err := proxyFromSecretRef(ctx, r.Client, obj.Namespace, obj.Spec.ProxySecretRef)
	if err != nil {
		return authFailed(fmt.Errorf("failed to get proxy URL: %w", err))
	}
	creds.proxy = proxy
	if ref := obj.Spec.CertSecretRef; ref != nil {
		creds.tls, err = secrets.TLSConfigFromSecretRef(ctx, r.Client, types.NamespacedName{Namespace: obj.Namespace, Name: ref.Name}, secrets.WithSystemCertPool())
		if err != nil {
			return authFailed(fmt.Errorf("failed to get TLS config: %w", err))
		}
	}

	switch obj.Spec.Provider {
	case sourcev1.BucketProviderGoogle:
		opts, e := r.gcsOptions(ctx, obj, creds)
		if e != nil {
			return nil, e
		}
		c, err := bucketsrc.NewGCS(ctx, opts)
		if err != nil {
			return authFailed(err)
		}
		return c, nil
	case sourcev1.BucketProviderAzure:
		// Without a secret (unsupportedBucketSpec), Flux's credential
		// chain ends in fluxcd/pkg/auth's azure provider: the controller's
		// identity, or spec.serviceAccountName's through workload identity.
		// Like the gcp token source, it keeps the reconcile's ctx.
		c, err := bucketsrc.NewAzure(bucketsrc.AzureOptions{
			Endpoint: obj.Spec.Endpoint,
			Credential: azureauth.NewTokenCredential(ctx,
				cloudAuthOptions(r.Client, r.TokenCache, sourcev1.BucketKind, obj, obj.Spec.ServiceAccountName, creds.proxy)...),
			Proxy: creds.proxy,
		})
		if err != nil {
			return authFailed(err)
		}
		return c, nil
	}
	if err := bucketsrc.ValidateEndpoint(obj.Spec.Endpoint); err != nil {
		return nil, NewStalling(err, sourcev1.URLInvalidReason)
	}
	opts, e := r.s3Options(ctx, obj, creds)
	if e != nil {
		return nil, e
	}
	c, err := bucketsrc.NewS3(opts)
	if err != nil {
		return authFailed(fmt.Errorf("failed to create the S3 client: %w", err))
	}
	return c, nil
}

// gcsOptions are the gcp provider's, as Flux's gcp.NewClient takes them:
// the service account key in spec.secretRef's 'serviceaccount' field,
// or without a secret the tokens of fluxcd/pkg/auth's gcp provider (the
// controller's identity, or spec.serviceAccountName's through workload
// identity federation). spec.endpoint is not used, as in Flux.
func (r *BucketReconciler) gcsOptions(ctx context.Context, obj *sourcev1.Bucket, creds bucketCredentials) (bucketsrc.GCSOptions, *Error) {
	opts := bucketsrc.GCSOptions{Proxy: creds.proxy}
	if s := creds.secret; s != nil {
		if _, ok := s.Data["serviceaccount"]; !ok {
			return opts, NewGeneric(fmt.Errorf("invalid '%s' secret data: required fields 'serviceaccount'", s.Name), sourcev1.AuthenticationFailedReason)
		}
		opts.ServiceAccountKey = s.Data["serviceaccount"]
		return opts, nil
	}
	// The token source keeps ctx, the reconcile's: the client lives
	// only within it.
	opts.Tokens = gcpauth.NewTokenSource(ctx,
		cloudAuthOptions(r.Client, r.TokenCache, sourcev1.BucketKind, obj, obj.Spec.ServiceAccountName, creds.proxy)...)
	return opts, nil
}

// s3Options are the endpoint, TLS, proxy and credentials of obj's S3
// client, read as Flux's createBucketProvider does: spec.secretRef's
// keys, or for the aws provider without one the credentials of
// fluxcd/pkg/auth's aws provider (the controller's AWS identity, or
// spec.serviceAccountName's role exchanged at STS), with spec.region as
// the STS region and spec.sts.endpoint as its endpoint.
func (r *BucketReconciler) s3Options(ctx context.Context, obj *sourcev1.Bucket, creds bucketCredentials) (bucketsrc.S3Options, *Error) {
	opts := bucketsrc.S3Options{Endpoint: obj.Spec.Endpoint, Region: obj.Spec.Region, Insecure: obj.Spec.Insecure, Proxy: creds.proxy, TLS: creds.tls}
	authFailed := func(err error) (bucketsrc.S3Options, *Error) {
		return opts, NewGeneric(err, sourcev1.AuthenticationFailedReason)
	}
	keys, proxy := creds.secret, creds.proxy
	if keys != nil && (len(keys.Data["accesskey"]) == 0 || len(keys.Data["secretkey"]) == 0) {
		return authFailed(fmt.Errorf("invalid '%s' secret data: required fields 'accesskey' and 'secretkey'", keys.Name))
	}
	if sts := obj.Spec.STS; sts != nil {
		if err := validateBucketSTS(obj.Spec.Provider, sts); err != nil {
			return opts, NewStalling(err, sourcev1.InvalidSTSConfigurationReason)
		}
		if _, err := url.Parse(sts.Endpoint); err != nil {
			return opts, NewStalling(fmt.Errorf("failed to parse STS endpoint '%s': %w", sts.Endpoint, err), sourcev1.URLInvalidReason)
		}
	}

	switch {
	case keys != nil:
		opts.AccessKey, opts.SecretKey = string(keys.Data["accesskey"]), string(keys.Data["secretkey"])
	case obj.Spec.Provider == sourcev1.BucketProviderAmazon:
		authOpts := cloudAuthOptions(r.Client, r.TokenCache, sourcev1.BucketKind, obj, obj.Spec.ServiceAccountName, proxy)
		if obj.Spec.Region != "" {
			authOpts = append(authOpts, auth.WithSTSRegion(obj.Spec.Region))
		}
		if sts := obj.Spec.STS; sts != nil {
			authOpts = append(authOpts, auth.WithSTSEndpoint(sts.Endpoint))
		}
		aws, err := awsauth.NewCredentialsProvider(ctx, authOpts...).Retrieve(ctx)
		if err != nil {
			return authFailed(fmt.Errorf("AWS authentication failed: %w", err))
		}
		opts.AccessKey, opts.SecretKey, opts.SessionToken = aws.AccessKeyID, aws.SecretAccessKey, aws.SessionToken
	}
	return opts, nil
}

// validateBucketSTS checks spec.sts against the bucket provider with
// Flux's messages (internal/bucket/minio ValidateSTSProvider): the aws
// provider takes the aws STS without secrets, the generic provider the
// ldap STS. The CRD refuses the same combinations; this keeps an object
// created before those rules from fetching as another identity.
func validateBucketSTS(provider string, sts *sourcev1.BucketSTSSpec) error {
	switch provider {
	case sourcev1.BucketProviderAmazon:
		switch {
		case sts.Provider != sourcev1.STSProviderAmazon:
		case sts.SecretRef != nil:
			return fmt.Errorf("spec.sts.secretRef is not required for the '%s' STS provider", sts.Provider)
		case sts.CertSecretRef != nil:
			return fmt.Errorf("spec.sts.certSecretRef is not required for the '%s' STS provider", sts.Provider)
		default:
			return nil
		}
	case sourcev1.BucketProviderGeneric:
		if sts.Provider == sourcev1.STSProviderLDAP {
			return nil
		}
	default:
		return fmt.Errorf("STS configuration is not supported for '%s' bucket provider", provider)
	}
	return fmt.Errorf("STS provider '%s' is not supported for '%s' bucket provider", sts.Provider, provider)
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
// an STS would fetch as another identity than asked for.
func unsupportedBucketSpec(obj *sourcev1.Bucket) error {
	var fields []string
	switch p := obj.Spec.Provider; p {
	case "", sourcev1.BucketProviderGeneric, sourcev1.BucketProviderAmazon, sourcev1.BucketProviderGoogle:
	case sourcev1.BucketProviderAzure:
		// Flux's secret forms (account key, SAS, client secret or
		// certificate, managed identity) are not implemented.
		if obj.Spec.SecretRef != nil {
			fields = append(fields, "spec.secretRef for spec.provider 'azure'")
		}
	default:
		fields = append(fields, "spec.provider '"+p+"'")
	}
	// The ldap STS is the generic provider's (validateBucketSTS).
	if sts := obj.Spec.STS; sts != nil && sts.Provider == sourcev1.STSProviderLDAP && obj.Spec.Provider == sourcev1.BucketProviderGeneric {
		fields = append(fields, "spec.sts.provider '"+sts.Provider+"'")
	}
	return notSupported(fields)
}
