package reconcilers

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"path/filepath"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	"github.com/fluxcd/pkg/runtime/patch"
	"github.com/fluxcd/pkg/runtime/secrets"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"github.com/opencontainers/go-digest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	helmsrc "github.com/sourceraft/sourceraft/sources/helm"
)

// HelmRepositoryReconciler reconciles source.toolkit.fluxcd.io/v1
// HelmRepository objects of the default type (an HTTP(S) repository) into
// an artifact of the repository's normalised index, as Flux does: the
// revision is the sha256 digest of the fetched index.yaml, the artifact
// index-<hex of that digest>.yaml holds the index with its entries sorted,
// as JSON. The index is read and written one chart at a time (see
// helmsrc.NormalizeIndexFile), through files in the working directory,
// so a large index is never held whole. Objects of type oci are static (Flux v1): they have no
// artifact and no status, and any left from the default type is removed.
type HelmRepositoryReconciler struct {
	// Client writes only while this replica leads (see leaderclient.go).
	client.Client
	*notifier
	store *artifactStore

	ControllerName string
	// IndexMaxSize bounds the fetched index.yaml; zero is
	// helmsrc.DefaultIndexMaxSize.
	IndexMaxSize int64
	// DigestAlgorithm is the revision's, Flux's --artifact-digest-algo.
	DigestAlgorithm digest.Algorithm
}

// helmRepoState is what the sub-reconcilers of one reconcile share.
type helmRepoState struct {
	// dir is the temporary working directory.
	dir string
	// url is the repository URL the index was fetched from.
	url string
	// revision is the digest of the fetched index, set by reconcileSource.
	revision string
	// indexFile holds the normalised index as stored, set by
	// reconcileSource unless the revision is the stored artifact's.
	indexFile string
}

type helmRepoStep = step[*sourcev1.HelmRepository, helmRepoState]

// helmRepositoryKind is HelmRepository to the shared reconcile flow.
var helmRepositoryKind = sourceKind[*sourcev1.HelmRepository]{
	name:                   sourcev1.HelmRepositoryKind,
	conds:                  helmRepositoryConditions,
	newObject:              func() *sourcev1.HelmRepository { return &sourcev1.HelmRepository{} },
	suspended:              func(o *sourcev1.HelmRepository) bool { return o.Spec.Suspend },
	observedGeneration:     func(o *sourcev1.HelmRepository) int64 { return o.Status.ObservedGeneration },
	lastHandledReconcileAt: func(o *sourcev1.HelmRepository) string { return o.Status.GetLastHandledReconcileRequest() },
	setArtifact: func(o *sourcev1.HelmRepository, a *meta.Artifact) {
		o.Status.Artifact, o.Status.URL = a, statusURL(a)
	},
}

// SetupWithManager registers the reconciler, triggered by spec changes
// and by the reconcile.fluxcd.io/requestedAt annotation.
func (r *HelmRepositoryReconciler) SetupWithManager(mgr ctrl.Manager, concurrent int) error {
	return setupSource(mgr, &sourcev1.HelmRepository{}, concurrent, r)
}

// Reconcile runs the shared flow (source.go) in a fresh working
// directory: reconcileStorage, then reconcileSource and reconcileArtifact.
// An object of type oci is made static instead.
func (r *HelmRepositoryReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	f := &sourceReconcile[*sourcev1.HelmRepository, helmRepoState]{
		kind: &helmRepositoryKind, client: r.Client, notifier: r.notifier, store: r.store, fieldOwner: r.ControllerName,
		static: func(ctx context.Context, sp *patch.SerialPatcher, obj *sourcev1.HelmRepository) (bool, error) {
			if obj.Spec.Type != sourcev1.HelmRepositoryTypeOCI {
				return false, nil
			}
			return true, r.makeStatic(ctx, sp, obj)
		},
		workDir:  true,
		newState: func(dir string) *helmRepoState { return &helmRepoState{dir: dir} },
		steps:    []helmRepoStep{r.reconcileSource, r.reconcileArtifact},
		notify: func(ctx context.Context, oldObj, obj *sourcev1.HelmRepository, st *helmRepoState) {
			if obj.GetArtifact() == nil {
				return
			}
			size := "unknown size"
			if s := obj.GetArtifact().Size; s != nil {
				size = fmt.Sprintf("size %s", helmHumanSize(*s))
			}
			r.notifySuccess(ctx, oldObj, obj, helmRepositoryConditions,
				fmt.Sprintf("stored fetched index of %s from '%s'", size, st.url))
		},
	}
	return f.reconcile(ctx, req)
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

// reconcileSource fetches and normalises the repository index.
//
// Sets FetchFailed (invalid URL: also Stalled; missing or invalid secret,
// fetch failure, index over the size limit, invalid index); removes it on
// success. Sets ArtifactOutdated, Reconciling and Ready=Unknown when the
// index revision differs from the stored artifact's.
func (r *HelmRepositoryReconciler) reconcileSource(ctx context.Context, sp *patch.SerialPatcher, obj *sourcev1.HelmRepository, st *helmRepoState) (Result, error) {
	base, err := helmsrc.ParseRepositoryURL(obj.Spec.URL)
	if err != nil {
		return fetchFailed(obj, NewStalling(err, sourcev1.URLInvalidReason))
	}
	if err := unsupportedHelmRepoSpec(obj); err != nil {
		return fetchFailed(obj, NewStalling(err, UnsupportedFieldReason))
	}
	st.url = obj.Spec.URL
	hc, err := newHelmRepoClient(ctx, r.Client, obj, base)
	if err != nil {
		return fetchFailed(obj, NewGeneric(err, sourcev1.AuthenticationFailedReason))
	}
	defer hc.Close()

	fetchCtx, cancel := context.WithTimeout(ctx, helmTimeout(obj))
	defer cancel()
	file, revision, err := hc.FetchToFile(fetchCtx, hc.IndexURL(), st.dir, "index-*.yaml", helmsrc.Limits{IndexMaxSize: r.IndexMaxSize}.Index(), r.DigestAlgorithm)
	if err != nil {
		return fetchFailed(obj, NewGeneric(fmt.Errorf("failed to fetch Helm repository index: %w", err), meta.FailedReason))
	}
	st.revision = revision

	if obj.GetArtifact().HasRevision(revision) {
		conditions.Delete(obj, sourcev1.FetchFailedCondition)
		return ResultSuccess, nil
	}
	st.indexFile = filepath.Join(st.dir, "index.json")
	if err := helmsrc.NormalizeIndexFile(file, st.indexFile); err != nil {
		return fetchFailed(obj, NewGeneric(fmt.Errorf("failed to load Helm repository from index YAML: %w", err), sourcev1.IndexationFailedReason))
	}
	conditions.Delete(obj, sourcev1.FetchFailedCondition)

	msg := fmt.Sprintf("new index revision '%s'", revision)
	if err := helmRepositoryKind.markOutdated(ctx, sp, obj, r.ControllerName, msg); err != nil {
		return ResultEmpty, err
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
		r.notifyUpToDate(obj, st.revision)
		return ResultSuccess, nil
	}

	art := newArtifactFor(sourcev1.HelmRepositoryKind, obj, st.revision, "index-"+digest.Digest(st.revision).Encoded()+".yaml")
	if err := r.store.storeFile(ctx, &art, st.indexFile); err != nil {
		e := NewGeneric(fmt.Errorf("unable to save artifact to storage: %w", err), sourcev1.ArchiveOperationFailedReason)
		conditions.MarkTrue(obj, sourcev1.StorageOperationFailedCondition, e.Reason, "%s", e)
		return ResultEmpty, e
	}
	conditions.Delete(obj, sourcev1.StorageOperationFailedCondition)

	// The artifact is committed: only now may the status name it.
	helmRepositoryKind.setArtifact(obj, r.store.toStatus(art))

	return ResultSuccess, nil
}

// unsupportedHelmRepoSpec names the spec fields of a default-type
// HelmRepository this build cannot honour. spec.provider only applies to
// the oci type in Flux (whose charts the HelmChart reconciler pulls with
// the provider's credentials); for an index anything but generic is
// refused here rather than silently fetching anonymously.
func unsupportedHelmRepoSpec(obj *sourcev1.HelmRepository) error {
	var fields []string
	if p := obj.Spec.Provider; p != "" && p != sourcev1.GenericOCIProvider {
		fields = append(fields, "spec.provider '"+p+"'")
	}
	return notSupported(fields)
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

// newHelmRepoClient configures the client of a HelmRepository from its
// secretRef (username and password), certSecretRef (tls.crt, tls.key,
// ca.crt), passCredentials and timeout. A secret that cannot be read or
// parsed is an authentication failure.
func newHelmRepoClient(ctx context.Context, c client.Reader, obj *sourcev1.HelmRepository, base *url.URL) (*helmsrc.Client, error) {
	o := helmsrc.ClientOptions{PassCredentials: obj.Spec.PassCredentials, Timeout: obj.GetTimeout()}
	if ref := obj.Spec.SecretRef; ref != nil {
		secret, err := getSecret(ctx, c, obj.Namespace, ref.Name)
		if err != nil {
			return nil, err
		}
		if o.Username, o.Password, err = helmBasicAuth(ctx, secret); err != nil {
			return nil, err
		}
	}
	if ref := obj.Spec.CertSecretRef; ref != nil {
		secret, err := getSecret(ctx, c, obj.Namespace, ref.Name)
		if err != nil {
			return nil, err
		}
		if o.TLS, err = secrets.TLSConfigFromSecret(ctx, secret); err != nil {
			return nil, fmt.Errorf("invalid TLS data in secret '%s/%s': %w", obj.Namespace, ref.Name, err)
		}
	}
	return helmsrc.NewClient(base, o), nil
}

// helmTimeout is the HelmRepository's spec.timeout, Flux's default when unset.
func helmTimeout(obj *sourcev1.HelmRepository) time.Duration {
	if t := obj.GetTimeout(); t > 0 {
		return t
	}
	return time.Minute
}
