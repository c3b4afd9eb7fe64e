package reconcilers

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/auth"
	"github.com/fluxcd/pkg/cache"
	"github.com/fluxcd/pkg/runtime/conditions"
	"github.com/fluxcd/pkg/runtime/patch"
	"github.com/fluxcd/pkg/runtime/secrets"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sourceraft/sourceraft/archive"
	ocisrc "github.com/sourceraft/sourceraft/sources/oci"
	"github.com/sourceraft/sourceraft/sources/oci/verify"
	"github.com/sourceraft/sourceraft/storage"
)

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
	// TokenCache keeps cloud registry credentials; nil is no caching.
	TokenCache *cache.TokenCache
}

// ociState is what the sub-reconcilers of one reconcile share.
type ociState struct {
	// dir is the temporary working directory; the layer is extracted
	// into its content directory or copied into its layer file.
	dir string
	// ref is what reconcileSource resolved spec.ref to.
	ref *ocisrc.Resolved
	// pulled is what reconcileSource fetched; nil when the stored
	// artifact is up to date.
	pulled *ocisrc.Pulled
}

// contentDir is where an extracted layer goes.
func (s *ociState) contentDir() string { return filepath.Join(s.dir, "content") }

// layerFile is where a copied layer goes.
func (s *ociState) layerFile() string { return filepath.Join(s.dir, "layer.tgz") }

type ociStep = step[*sourcev1.OCIRepository, ociState]

// ociRepositoryKind is OCIRepository to the shared reconcile flow.
var ociRepositoryKind = sourceKind[*sourcev1.OCIRepository]{
	name:                   sourcev1.OCIRepositoryKind,
	conds:                  ociRepositoryConditions,
	newObject:              func() *sourcev1.OCIRepository { return &sourcev1.OCIRepository{} },
	suspended:              func(o *sourcev1.OCIRepository) bool { return o.Spec.Suspend },
	observedGeneration:     func(o *sourcev1.OCIRepository) int64 { return o.Status.ObservedGeneration },
	lastHandledReconcileAt: func(o *sourcev1.OCIRepository) string { return o.Status.GetLastHandledReconcileRequest() },
	setArtifact:            func(o *sourcev1.OCIRepository, a *meta.Artifact) { o.Status.Artifact, o.Status.URL = a, statusURL(a) },
}

// SetupWithManager registers the reconciler, triggered by spec changes
// and by the reconcile.fluxcd.io/requestedAt annotation.
func (r *OCIRepositoryReconciler) SetupWithManager(mgr ctrl.Manager, concurrent int) error {
	return setupSource(mgr, &sourcev1.OCIRepository{}, concurrent, r)
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

// Reconcile runs the shared flow (source.go) in a fresh working
// directory: reconcileStorage, then reconcileSource and reconcileArtifact.
func (r *OCIRepositoryReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	f := &sourceReconcile[*sourcev1.OCIRepository, ociState]{
		kind: &ociRepositoryKind, client: r.Client, notifier: r.notifier, store: r.store, fieldOwner: r.ControllerName,
		workDir:  true,
		newState: func(dir string) *ociState { return &ociState{dir: dir} },
		steps:    []ociStep{r.reconcileSource, r.reconcileArtifact},
		notify: func(ctx context.Context, oldObj, obj *sourcev1.OCIRepository, st *ociState) {
			if obj.GetArtifact() != nil {
				r.notifySuccess(ctx, oldObj, obj, ociRepositoryConditions, ociArtifactMessage(obj))
			}
		},
	}
	return f.reconcile(ctx, req)
}

// reconcileSource resolves spec.ref to a manifest digest and, unless the
// stored artifact already has that revision and content configuration,
// pulls the selected layer into the working directory (extracted, or as
// it is for the copy operation).
//
// Sets FetchFailed (invalid URL or reference, or spec.serviceAccountName
// for a cloud provider with the ObjectLevelWorkloadIdentity gate off:
// also Stalled; missing secret or ServiceAccount, refused cloud
// credentials, registry failures, no matching layer) and
// BuildFailed (the layer is over a size limit); removes both on success.
// Sets ArtifactOutdated, Reconciling and Ready=Unknown when the revision
// or the content configuration differs from the stored artifact's.
func (r *OCIRepositoryReconciler) reconcileSource(ctx context.Context, sp *patch.SerialPatcher, obj *sourcev1.OCIRepository, st *ociState) (Result, error) {
	// A failed verification is recalculated on every reconcile; a
	// successful one stays until the revision or the spec changes.
	if conditions.IsFalse(obj, sourcev1.SourceVerifiedCondition) {
		conditions.Delete(obj, sourcev1.SourceVerifiedCondition)
	}
	if op := obj.GetLayerOperation(); op != sourcev1.OCILayerExtract && op != sourcev1.OCILayerCopy {
		return fetchFailed(obj, NewStalling(fmt.Errorf("unsupported layer operation: %s", op), sourcev1.OCILayerOperationFailedReason))
	}

	timeout := defaultOCITimeout
	if obj.Spec.Timeout != nil && obj.Spec.Timeout.Duration > 0 {
		timeout = obj.Spec.Timeout.Duration
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	rem, err := r.ociClient(rctx, obj)
	if err != nil {
		if errors.Is(err, ocisrc.ErrInvalidURL) {
			return fetchFailed(obj, NewStalling(fmt.Errorf("URL validation failed for '%s': %w", obj.Spec.URL, err), sourcev1.URLInvalidReason))
		}
		var e *Error
		if !errors.As(err, &e) {
			e = NewGeneric(err, sourcev1.AuthenticationFailedReason)
		}
		return fetchFailed(obj, e)
	}

	ref, err := rem.Resolve(ociReference(obj.Spec.Reference))
	if err != nil {
		switch {
		case errors.Is(err, ocisrc.ErrInvalidReference):
			return fetchFailed(obj, NewStalling(err, sourcev1.OCIPullFailedReason))
		case errors.Is(err, ocisrc.ErrListTags):
			return fetchFailed(obj, NewGeneric(fmt.Errorf("failed to determine the artifact tag for '%s': %w", obj.Spec.URL, err), sourcev1.ReadOperationFailedReason))
		}
		return fetchFailed(obj, NewGeneric(fmt.Errorf("failed to determine artifact digest: %w", err), sourcev1.OCIPullFailedReason))
	}
	st.ref = ref
	revision := ref.Revision()

	if err := r.verifySource(rctx, obj, rem, ref); err != nil {
		return ResultEmpty, err
	}

	// Skip pulling if the revision and the content configuration have not
	// changed.
	if obj.GetArtifact().HasRevision(revision) && !ociContentConfigChanged(obj) {
		conditions.Delete(obj, sourcev1.FetchFailedCondition)
		conditions.Delete(obj, sourcev1.BuildFailedCondition)
		return ResultSuccess, nil
	}

	why := fmt.Sprintf("new revision '%s' for '%s'", revision, ref.Display)
	if obj.GetArtifact().HasRevision(revision) {
		why = "content configuration differs from the last stored artifact"
	}
	if err := ociRepositoryKind.markOutdated(ctx, sp, obj, r.ControllerName, why); err != nil {
		return ResultEmpty, err
	}

	pulled, err := rem.Pull(ref, ocisrc.PullOptions{
		MediaType: obj.GetLayerMediaType(), Copy: obj.GetLayerOperation() == sourcev1.OCILayerCopy,
		Dir: st.contentDir(), File: st.layerFile(),
		Limits: ocisrc.Limits{Layer: r.layerMaxSize(), Untar: r.ArchiveMaxSize, Entries: r.ArchiveMaxEntries},
	})
	if err != nil {
		var limit *archive.LimitError
		if errors.As(err, &limit) {
			e := NewGeneric(fmt.Errorf("layer of revision '%s' is too large: %w", revision, err), ArchiveLimitReason)
			conditions.MarkTrue(obj, sourcev1.BuildFailedCondition, e.Reason, "%s", e)
			conditions.Delete(obj, sourcev1.FetchFailedCondition)
			return ResultEmpty, e
		}
		if errors.Is(err, ocisrc.ErrLayer) {
			return fetchFailed(obj, NewGeneric(err, sourcev1.OCILayerOperationFailedReason))
		}
		return fetchFailed(obj, NewGeneric(fmt.Errorf("failed to pull artifact from '%s': %w", obj.Spec.URL, err), sourcev1.OCIPullFailedReason))
	}
	st.pulled = pulled
	conditions.Delete(obj, sourcev1.FetchFailedCondition)
	ctrl.LoggerFrom(ctx).V(1).Info("oci artifact pulled", "url", obj.Spec.URL, "revision", revision)
	return ResultSuccess, nil
}

// verifySource checks the signatures of the resolved manifest as
// spec.verify asks, when the stored artifact is of another revision, the
// spec changed since the last verification, or it has not succeeded yet
// (as Flux, a verified revision is not verified again every reconcile).
//
// Sets SourceVerified=True (Succeeded) or False (VerificationError; the
// object stalls when keyless verification asks for the public Sigstore
// infrastructure); removes it when spec.verify is unset.
func (r *OCIRepositoryReconciler) verifySource(ctx context.Context, obj *sourcev1.OCIRepository, rem *ocisrc.Client, ref *ocisrc.Resolved) error {
	spec := obj.Spec.Verify
	if spec == nil {
		conditions.Delete(obj, sourcev1.SourceVerifiedCondition)
		return nil
	}
	revision := ref.Revision()
	if obj.GetArtifact().HasRevision(revision) && conditions.IsTrue(obj, sourcev1.SourceVerifiedCondition) &&
		conditions.GetObservedGeneration(obj, sourcev1.SourceVerifiedCondition) == obj.Generation {
		return nil
	}
	result, err := func() (verify.Result, error) {
		v, err := newOCIVerifier(ctx, r.Client, obj.Namespace, spec.Provider, spec.SecretRef, spec.MatchOIDCIdentity, spec.TrustedRootSecretRef, rem.Registry())
		if err != nil {
			return 0, err
		}
		return rem.Verify(ctx, v, ref)
	}()
	if err != nil {
		err = fmt.Errorf("failed to verify the signature using provider '%s': %w", verifyProviderName(spec.Provider, spec.SecretRef != nil), err)
		e := NewGeneric(err, sourcev1.VerificationError)
		if errors.Is(err, errKeylessPublicSigstore) {
			e = NewStalling(err, sourcev1.VerificationError)
		}
		conditions.MarkFalse(obj, sourcev1.SourceVerifiedCondition, e.Reason, "%s", e)
		return e
	}
	if result == verify.Verified {
		conditions.MarkTrue(obj, sourcev1.SourceVerifiedCondition, meta.SucceededReason, "verified signature of revision %s", revision)
	}
	return nil
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
	revision := st.ref.Revision()
	upToDate := func() bool { return obj.GetArtifact().HasRevision(revision) && !ociContentConfigChanged(obj) }
	defer func() {
		if upToDate() {
			conditions.Delete(obj, sourcev1.ArtifactOutdatedCondition)
			conditions.MarkTrue(obj, sourcev1.ArtifactInStorageCondition, meta.SucceededReason,
				"stored artifact for digest '%s'", revision)
		}
	}()
	if upToDate() {
		r.notifyUpToDate(obj, revision)
		return ResultSuccess, nil
	}

	// Flux names the file after the manifest digest, 'sha256:<hex>.tar.gz',
	// for both operations.
	art := newArtifactFor(sourcev1.OCIRepositoryKind, obj, revision, st.ref.Digest+".tar.gz")
	art.Metadata = st.pulled.Annotations

	var err error
	switch obj.GetLayerOperation() {
	case sourcev1.OCILayerCopy:
		err = r.storeLayerFile(ctx, &art, st.layerFile(), st.pulled.LayerDigest)
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
	if err != nil {
		return ResultEmpty, storeFailed(obj, err, revision, "layer", sourcev1.BuildFailedCondition)
	}
	conditions.Delete(obj, sourcev1.BuildFailedCondition)
	conditions.Delete(obj, sourcev1.StorageOperationFailedCondition)

	// The artifact is committed: only now may the status name it.
	ociRepositoryKind.setArtifact(obj, r.store.toStatus(art))
	obj.Status.ObservedIgnore = obj.Spec.Ignore
	obj.Status.ObservedLayerSelector = obj.Spec.LayerSelector.DeepCopy()

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
	if src, rev := a.Metadata[ocisrc.SourceAnnotation], a.Metadata[ocisrc.RevisionAnnotation]; src != "" && rev != "" {
		msg += fmt.Sprintf(", origin source '%s', origin revision '%s'", src, rev)
	}
	return msg
}

// ociClient builds the registry client of obj from spec.url,
// spec.secretRef and spec.serviceAccountName's image pull secrets,
// spec.provider, spec.proxySecretRef, spec.certSecretRef and
// spec.insecure, in Flux's order: Secrets first; only when none is named
// does a cloud provider issue the credentials, as the controller or, with
// spec.serviceAccountName, as that ServiceAccount.
func (r *OCIRepositoryReconciler) ociClient(ctx context.Context, obj *sourcev1.OCIRepository) (*ocisrc.Client, error) {
	opts := ocisrc.Options{Insecure: obj.Spec.Insecure}
	creds, err := r.pullSecretCredentials(ctx, obj)
	if err != nil {
		return nil, NewGeneric(fmt.Errorf("failed to get credential: %w", err), sourcev1.AuthenticationFailedReason)
	}
	opts.Credentials = creds
	// After the credentials, before the TLS configuration, as in Flux.
	proxy, err := proxyFromSecretRef(ctx, r.Client, obj.Namespace, obj.Spec.ProxySecretRef)
	if err != nil {
		return nil, NewGeneric(fmt.Errorf("failed to get proxy address: %w", err), sourcev1.AuthenticationFailedReason)
	}
	opts.Proxy = proxy
	if p := registryProvider(obj.Spec.Provider); p != nil && creds == nil {
		if opts.Credentials, err = r.cloudCredentials(ctx, obj, p, proxy); err != nil {
			return nil, err
		}
	}
	if ref := obj.Spec.CertSecretRef; ref != nil && ref.Name != "" {
		secret, err := getSecret(ctx, r.Client, obj.Namespace, ref.Name)
		if err != nil {
			return nil, NewGeneric(fmt.Errorf("failed to generate transport for '%s': %w", obj.Spec.URL, err), sourcev1.AuthenticationFailedReason)
		}
		tlsConfig, err := secrets.TLSConfigFromSecret(ctx, secret, secrets.WithSystemCertPool())
		if err != nil {
			return nil, NewGeneric(fmt.Errorf("failed to generate transport for '%s': %w", obj.Spec.URL, err), sourcev1.AuthenticationFailedReason)
		}
		opts.TLS = tlsConfig
	}
	return ocisrc.NewClient(ctx, obj.Spec.URL, opts)
}

// pullSecretCredentials are the registry credentials of spec.secretRef
// and of the image pull secrets of spec.serviceAccountName (whatever the
// provider), as Flux's keychain: spec.secretRef's win for a host both
// name. Nil when no Secret is named, the case in which a cloud provider
// authenticates.
func (r *OCIRepositoryReconciler) pullSecretCredentials(ctx context.Context, obj *sourcev1.OCIRepository) (ocisrc.Credentials, error) {
	var pullSecrets []corev1.Secret
	if ref := obj.Spec.SecretRef; ref != nil {
		secret, err := getSecret(ctx, r.Client, obj.Namespace, ref.Name)
		if err != nil {
			return nil, err
		}
		if len(secret.Data[corev1.DockerConfigJsonKey]) == 0 && len(secret.Data[corev1.DockerConfigKey]) == 0 {
			return nil, fmt.Errorf("secret '%s/%s' has no '%s' key: it must be of type %s",
				secret.Namespace, secret.Name, corev1.DockerConfigJsonKey, corev1.SecretTypeDockerConfigJson)
		}
		pullSecrets = append(pullSecrets, *secret)
	}
	if sa := obj.Spec.ServiceAccountName; sa != "" {
		saSecrets, err := secrets.PullSecretsFromServiceAccountRef(ctx, r.Client, types.NamespacedName{Namespace: obj.Namespace, Name: sa})
		if err != nil {
			return nil, err
		}
		pullSecrets = append(pullSecrets, saSecrets...)
	}
	if len(pullSecrets) == 0 {
		return nil, nil
	}
	creds := ocisrc.Credentials{}
	for _, secret := range pullSecrets {
		dockerJSON, dockerCfg := secret.Data[corev1.DockerConfigJsonKey], secret.Data[corev1.DockerConfigKey]
		if len(dockerJSON) == 0 && len(dockerCfg) == 0 {
			// An image pull secret of another type holds no registry
			// credentials, as for the kubelet.
			continue
		}
		parsed, err := ocisrc.ParseDockerConfig(dockerJSON, dockerCfg)
		if err != nil {
			return nil, fmt.Errorf("secret '%s/%s': %w", secret.Namespace, secret.Name, err)
		}
		for host, c := range parsed {
			if _, ok := creds[host]; !ok {
				creds[host] = c
			}
		}
	}
	return creds, nil
}

// cloudCredentials are the credentials provider issues for the registry
// of spec.url, with Flux's message and reason when it refuses: the
// registry is not the provider's, or the identity cannot be had. The
// exchange goes through the object's proxy, as the pull does.
func (r *OCIRepositoryReconciler) cloudCredentials(ctx context.Context, obj *sourcev1.OCIRepository, provider auth.ArtifactRegistryCredentialsProvider, proxy *url.URL) (ocisrc.Credentials, error) {
	if err := objectLevelIdentityCheck(obj.Spec.ServiceAccountName); err != nil {
		return nil, err
	}
	// An invalid URL stalls as such, not as a provider's refusal.
	host, err := ocisrc.RegistryHost(obj.Spec.URL)
	if err != nil {
		return nil, err
	}
	opts := cloudAuthOptions(r.Client, r.TokenCache, sourcev1.OCIRepositoryKind, obj, obj.Spec.ServiceAccountName, proxy)
	creds, err := cloudRegistryLogin(ctx, provider, host, strings.TrimPrefix(obj.Spec.URL, ocisrc.URLPrefix), opts...)
	if err != nil {
		return nil, NewGeneric(fmt.Errorf("failed to get credential from %s: %w", obj.Spec.Provider, err), sourcev1.AuthenticationFailedReason)
	}
	return creds, nil
}

// ociReference is spec.ref as the client's Reference; nil is the zero
// Reference, the 'latest' tag.
func ociReference(ref *sourcev1.OCIRepositoryRef) ocisrc.Reference {
	if ref == nil {
		return ocisrc.Reference{}
	}
	return ocisrc.Reference{Tag: ref.Tag, SemVer: ref.SemVer, SemverFilter: ref.SemverFilter, Digest: ref.Digest}
}
