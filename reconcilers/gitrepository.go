package reconcilers

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"reflect"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/auth"
	azureauth "github.com/fluxcd/pkg/auth/azure"
	"github.com/fluxcd/pkg/cache"
	"github.com/fluxcd/pkg/runtime/conditions"
	"github.com/fluxcd/pkg/runtime/patch"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sourceraft/sourceraft/archive"
	gitsrc "github.com/sourceraft/sourceraft/sources/git"
	"github.com/sourceraft/sourceraft/storage"
)

// Reasons of GitRepository conditions and events beyond the Flux API's.
const (
	// ArchiveLimitReason: the source is over the archive size or entry limit.
	ArchiveLimitReason = "ArchiveLimitExceeded"
	// UnsupportedFieldReason: the spec uses a field this build cannot honour.
	UnsupportedFieldReason = "UnsupportedField"
)

// defaultGitTimeout bounds Git operations when spec.timeout is unset (the
// CRD defaults it to the same value).
const defaultGitTimeout = 60 * time.Second

// GitRepositoryReconciler reconciles source.toolkit.fluxcd.io/v1
// GitRepository objects into tar.gz artifacts in the replicated store.
type GitRepositoryReconciler struct {
	// Client writes only while this replica leads (see leaderclient.go).
	client.Client
	*notifier
	store *artifactStore

	ControllerName    string
	RequeueDependency time.Duration
	ArchiveMaxSize    int64
	ArchiveMaxEntries int
	// TokenCache keeps GitHub App and Azure tokens; nil is no caching.
	TokenCache *cache.TokenCache
}

// gitState is what the sub-reconcilers of one reconcile share.
type gitState struct {
	// dir is the temporary checkout directory.
	dir string
	// commit is the checked out commit, set by reconcileSource.
	commit *gitsrc.Commit
	// includes are the included artifacts, set by reconcileSource.
	includes artifactSet
}

type gitStep = step[*sourcev1.GitRepository, gitState]

// gitRepositoryKind is GitRepository to the shared reconcile flow.
var gitRepositoryKind = sourceKind[*sourcev1.GitRepository]{
	name:                   sourcev1.GitRepositoryKind,
	conds:                  gitRepositoryConditions,
	newObject:              func() *sourcev1.GitRepository { return &sourcev1.GitRepository{} },
	suspended:              func(o *sourcev1.GitRepository) bool { return o.Spec.Suspend },
	observedGeneration:     func(o *sourcev1.GitRepository) int64 { return o.Status.ObservedGeneration },
	lastHandledReconcileAt: func(o *sourcev1.GitRepository) string { return o.Status.GetLastHandledReconcileRequest() },
	setArtifact:            func(o *sourcev1.GitRepository, a *meta.Artifact) { o.Status.Artifact = a },
}

// SetupWithManager registers the reconciler, triggered by spec changes
// and by the reconcile.fluxcd.io/requestedAt annotation.
func (r *GitRepositoryReconciler) SetupWithManager(mgr ctrl.Manager, concurrent int) error {
	return setupSource(mgr, &sourcev1.GitRepository{}, concurrent, r)
}

// Reconcile runs the shared flow (source.go) in a fresh checkout
// directory: reconcileStorage, then reconcileSource, reconcileInclude and
// reconcileArtifact.
func (r *GitRepositoryReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	f := &sourceReconcile[*sourcev1.GitRepository, gitState]{
		kind: &gitRepositoryKind, client: r.Client, notifier: r.notifier, store: r.store, fieldOwner: r.ControllerName,
		workDir:  true,
		newState: func(dir string) *gitState { return &gitState{dir: dir} },
		steps:    []gitStep{r.reconcileSource, r.reconcileInclude, r.reconcileArtifact},
		notify: func(ctx context.Context, oldObj, obj *sourcev1.GitRepository, st *gitState) {
			if st.commit != nil {
				r.notifySuccess(ctx, oldObj, obj, gitRepositoryConditions,
					fmt.Sprintf("stored artifact for commit '%s'", st.commit.ShortMessage()))
			}
		},
	}
	return f.reconcile(ctx, req)
}

// reconcileSource resolves the includes and the credentials, then checks
// out spec.ref into the checkout directory.
//
// Sets FetchFailed (invalid URL or reference, or spec.serviceAccountName
// with the ObjectLevelWorkloadIdentity gate off: also Stalled; missing
// secret, proxy secret or ServiceAccount, a GitHub App or Entra ID token
// refused, Git failure) and
// IncludeUnavailable (an include without an artifact, retried after
// --requeue-dependency); removes both on success.
// Sets or removes SourceVerified (verifySignature, git_verify.go) and
// removes a False one first.
// Sets ArtifactOutdated, Reconciling and Ready=Unknown when the revision
// or the content configuration differs from the stored artifact's.
func (r *GitRepositoryReconciler) reconcileSource(ctx context.Context, sp *patch.SerialPatcher, obj *sourcev1.GitRepository, st *gitState) (Result, error) {
	// A failed verification is decided afresh on every reconcile; a
	// successful one stays until a commit is verified or fails again.
	if conditions.IsFalse(obj, sourcev1.SourceVerifiedCondition) {
		conditions.Delete(obj, sourcev1.SourceVerifiedCondition)
	}
	u, err := gitsrc.ParseURL(obj.Spec.URL)
	if err != nil {
		return fetchFailed(obj, NewStalling(err, sourcev1.URLInvalidReason))
	}
	if err := unsupportedGitSpec(obj); err != nil {
		return fetchFailed(obj, NewStalling(err, UnsupportedFieldReason))
	}

	proxy, err := proxyFromSecretRef(ctx, r.Client, obj.Namespace, obj.Spec.ProxySecretRef)
	if err != nil {
		return fetchFailed(obj, NewGeneric(fmt.Errorf("failed to configure proxy options: %w", err), sourcev1.AuthenticationFailedReason))
	}
	var data map[string][]byte
	if ref := obj.Spec.SecretRef; ref != nil {
		secret := &corev1.Secret{}
		if err := r.Get(ctx, types.NamespacedName{Namespace: obj.Namespace, Name: ref.Name}, secret); err != nil {
			return fetchFailed(obj, NewGeneric(fmt.Errorf("failed to get secret '%s/%s': %w", obj.Namespace, ref.Name, err), sourcev1.AuthenticationFailedReason))
		}
		data = secret.Data
		if data == nil {
			data = map[string][]byte{}
		}
	}
	checkoutAuth, e := r.gitAuth(ctx, obj, u, data, proxy)
	if e != nil {
		return fetchFailed(obj, e)
	}

	includes, err := r.fetchIncludes(ctx, obj)
	if err != nil {
		var e *Error
		errors.As(err, &e)
		conditions.MarkTrue(obj, sourcev1.IncludeUnavailableCondition, e.Reason, "%s", e)
		return ResultEmpty, e
	}
	conditions.Delete(obj, sourcev1.IncludeUnavailableCondition)
	st.includes = includes

	timeout := defaultGitTimeout
	if obj.Spec.Timeout != nil && obj.Spec.Timeout.Duration > 0 {
		timeout = obj.Spec.Timeout.Duration
	}
	gitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	commit, err := gitsrc.Checkout(gitCtx, st.dir, gitsrc.CheckoutOptions{
		URL: obj.Spec.URL, Auth: checkoutAuth, Ref: gitReference(obj.Spec.Reference),
		RecurseSubmodules: obj.Spec.RecurseSubmodules, SparseCheckout: obj.Spec.SparseCheckout,
		Proxy: proxy,
	})
	if err != nil {
		if errors.Is(err, gitsrc.ErrInvalidReference) {
			return fetchFailed(obj, NewStalling(err, sourcev1.GitOperationFailedReason))
		}
		return fetchFailed(obj, NewGeneric(fmt.Errorf("failed to checkout and determine revision: %w", err), sourcev1.GitOperationFailedReason))
	}
	conditions.Delete(obj, sourcev1.FetchFailedCondition)
	ctrl.LoggerFrom(ctx).V(1).Info("git repository checked out", "url", obj.Spec.URL, "revision", commit.Revision())
	if res, err := r.verifySignature(ctx, obj, commit); err != nil {
		return res, err
	}
	st.commit = commit

	cur := obj.GetArtifact()
	var why string
	switch {
	case !cur.HasRevision(commit.Revision()):
		why = fmt.Sprintf("new upstream revision '%s'", commit.Revision())
	case gitContentConfigChanged(obj, includes):
		why = "content configuration differs from the last stored artifact"
	default:
		return ResultSuccess, nil
	}
	if err := gitRepositoryKind.markOutdated(ctx, sp, obj, r.ControllerName, why); err != nil {
		return ResultEmpty, err
	}
	return ResultSuccess, nil
}

// gitAuth is the auth of obj's checkout: the secret's credentials; for
// provider azure an Entra ID access token for Azure DevOps in their place
// (the secret's CA kept), of the controller's identity or of
// spec.serviceAccountName's; for provider github an installation token of
// the GitHub App the secret describes. Token exchanges go through proxy,
// as the checkout. The failures are Flux's: InvalidProviderConfiguration
// when the secret and the provider disagree, FeatureGateDisabled for a
// ServiceAccount without ObjectLevelWorkloadIdentity, AuthenticationFailed
// otherwise.
func (r *GitRepositoryReconciler) gitAuth(ctx context.Context, obj *sourcev1.GitRepository, u *url.URL, data map[string][]byte, proxy *url.URL) (*gitsrc.Auth, *Error) {
	authFailed := func(err error) *Error {
		return NewGeneric(fmt.Errorf("failed to configure authentication options: %w", err), sourcev1.AuthenticationFailedReason)
	}
	switch obj.GetProvider() {
	case sourcev1.GitProviderAzure:
		secretAuth, err := gitsrc.AuthFromSecret(u, data)
		if err != nil {
			return nil, authFailed(err)
		}
		if e := objectLevelIdentityCheck(obj.Spec.ServiceAccountName); e != nil {
			return nil, e
		}
		opts := append(cloudAuthOptions(r.Client, r.TokenCache, sourcev1.GitRepositoryKind, obj, obj.Spec.ServiceAccountName, proxy),
			auth.WithGitURL(*u))
		creds, err := auth.GetGitCredentials(ctx, azureauth.Provider{}, opts...)
		if err != nil {
			return nil, authFailed(err)
		}
		return secretAuth.WithBearerToken(creds.BearerToken), nil
	case sourcev1.GitProviderGitHub:
		noAppData := errors.New("secretRef with github app data must be specified when provider is set to github")
		if obj.Spec.SecretRef == nil {
			return nil, NewStalling(noAppData, sourcev1.InvalidProviderConfigurationReason)
		}
		// Flux reads a secret without an app ID or a key as no app data.
		if len(data[gitsrc.KeyGitHubAppID]) == 0 || len(data[gitsrc.KeyGitHubAppPrivateKey]) == 0 {
			return nil, NewGeneric(noAppData, sourcev1.InvalidProviderConfigurationReason)
		}
		app, err := gitsrc.GitHubAppFromSecret(data)
		if err != nil {
			return nil, authFailed(err)
		}
		a, err := gitsrc.GitHubAppTokens{Cache: r.TokenCache}.Auth(ctx, app, proxy)
		if err != nil {
			return nil, authFailed(err)
		}
		return a, nil
	default:
		if len(data[gitsrc.KeyGitHubAppID]) > 0 {
			return nil, NewGeneric(fmt.Errorf("secretRef '%s/%s' has github app data but provider is not set to github",
				obj.Namespace, obj.Spec.SecretRef.Name), sourcev1.InvalidProviderConfigurationReason)
		}
		a, err := gitsrc.AuthFromSecret(u, data)
		if err != nil {
			return nil, authFailed(err)
		}
		return a, nil
	}
}

// reconcileInclude copies the included artifacts into the checkout.
//
// Sets IncludeUnavailable when an include cannot be copied (waiting when
// its artifact left the store); removes it on success.
func (r *GitRepositoryReconciler) reconcileInclude(ctx context.Context, _ *patch.SerialPatcher, obj *sourcev1.GitRepository, st *gitState) (Result, error) {
	for i, incl := range obj.Spec.Include {
		if err := r.copyInclude(ctx, st.includes[i], incl, st.dir); err != nil {
			err = fmt.Errorf("failed to copy '%s' include from '%s' to '%s': %w", incl.GitRepositoryRef.Name, incl.GetFromPath(), incl.GetToPath(), err)
			var e *Error
			if errors.Is(err, storage.ErrNotFound) {
				e = NewWaiting(err, "NoArtifact", r.RequeueDependency)
			} else {
				e = NewGeneric(err, "CopyFailure")
			}
			conditions.MarkTrue(obj, sourcev1.IncludeUnavailableCondition, e.Reason, "%s", e)
			return ResultEmpty, e
		}
	}
	conditions.Delete(obj, sourcev1.IncludeUnavailableCondition)
	return ResultSuccess, nil
}

// reconcileArtifact archives the checkout into a new artifact unless the
// stored one already has this revision and content configuration, then
// records it in the status and collects superseded artifacts.
//
// Sets BuildFailed (ignore rules or archive limits) and
// StorageOperationFailed (the store refused the artifact); removes both
// and ArtifactOutdated on success, and sets ArtifactInStorage=True when
// the status names an artifact of the checked-out revision.
func (r *GitRepositoryReconciler) reconcileArtifact(ctx context.Context, _ *patch.SerialPatcher, obj *sourcev1.GitRepository, st *gitState) (Result, error) {
	revision := st.commit.Revision()
	defer func() {
		if obj.GetArtifact().HasRevision(revision) && !gitContentConfigChanged(obj, st.includes) {
			conditions.Delete(obj, sourcev1.ArtifactOutdatedCondition)
			conditions.MarkTrue(obj, sourcev1.ArtifactInStorageCondition, meta.SucceededReason,
				"stored artifact for revision '%s'", revision)
		}
	}()
	if obj.GetArtifact().HasRevision(revision) && !gitContentConfigChanged(obj, st.includes) {
		r.notifyUpToDate(obj, revision)
		return ResultSuccess, nil
	}

	filter, err := archive.IgnoreFilter(st.dir, obj.Spec.Ignore)
	if err != nil {
		e := NewGeneric(fmt.Errorf("failed to load source ignore patterns from repository: %w", err), "SourceIgnoreError")
		conditions.MarkTrue(obj, sourcev1.BuildFailedCondition, e.Reason, "%s", e)
		return ResultEmpty, e
	}
	filter = withoutGitDir(filter)

	art := newArtifactFor(sourcev1.GitRepositoryKind, obj, revision, st.commit.Hash+".tar.gz")
	err = r.store.storeDir(ctx, &art, st.dir, archive.Options{Filter: filter, MaxSize: r.ArchiveMaxSize, MaxEntries: r.ArchiveMaxEntries})
	if err != nil {
		return ResultEmpty, storeFailed(obj, err, revision, "source", sourcev1.BuildFailedCondition)
	}
	conditions.Delete(obj, sourcev1.BuildFailedCondition)
	conditions.Delete(obj, sourcev1.StorageOperationFailedCondition)

	// The artifact is committed: only now may the status name it.
	obj.Status.Artifact = r.store.toStatus(art)
	obj.Status.IncludedArtifacts = st.includes
	obj.Status.ObservedIgnore = obj.Spec.Ignore
	obj.Status.ObservedRecurseSubmodules = obj.Spec.RecurseSubmodules
	obj.Status.ObservedInclude = obj.Spec.Include
	obj.Status.ObservedSparseCheckout = obj.Spec.SparseCheckout

	return ResultSuccess, nil
}

// gitContentConfigChanged reports whether the spec fields that shape the
// artifact's content differ from those the stored artifact was built with.
func gitContentConfigChanged(obj *sourcev1.GitRepository, includes artifactSet) bool {
	switch {
	case !equalStringPtr(obj.Spec.Ignore, obj.Status.ObservedIgnore),
		obj.Spec.RecurseSubmodules != obj.Status.ObservedRecurseSubmodules,
		!equalStrings(obj.Spec.SparseCheckout, obj.Status.ObservedSparseCheckout),
		!equalIncludes(obj.Spec.Include, obj.Status.ObservedInclude),
		includes.diff(obj.Status.IncludedArtifacts):
		return true
	}
	return false
}

func equalStringPtr(a, b *string) bool {
	return (a == nil && b == nil) || (a != nil && b != nil && *a == *b)
}

func equalStrings(a, b []string) bool {
	return len(a) == len(b) && (len(a) == 0 || reflect.DeepEqual(a, b))
}

func equalIncludes(a, b []sourcev1.GitRepositoryInclude) bool {
	return len(a) == len(b) && (len(a) == 0 || reflect.DeepEqual(a, b))
}

// unsupportedGitSpec names the spec fields this build cannot honour. They
// stall the object instead of being ignored: ignoring a cloud provider
// would fetch as another identity than asked for, and submodules fetched
// beside the proxy would take another route.
func unsupportedGitSpec(obj *sourcev1.GitRepository) error {
	var fields []string
	switch p := obj.GetProvider(); p {
	case sourcev1.GitProviderGeneric, sourcev1.GitProviderGitHub, sourcev1.GitProviderAzure:
	default:
		fields = append(fields, "spec.provider '"+p+"'")
	}
	// go-git fetches submodules without the proxy options.
	if obj.Spec.ProxySecretRef != nil && obj.Spec.RecurseSubmodules {
		fields = append(fields, "spec.recurseSubmodules with spec.proxySecretRef")
	}
	return notSupported(fields)
}

// gitReference is spec.ref as the checkout's Reference; nil is the zero
// Reference, the default branch.
func gitReference(ref *sourcev1.GitRepositoryRef) gitsrc.Reference {
	if ref == nil {
		return gitsrc.Reference{}
	}
	return gitsrc.Reference{Branch: ref.Branch, Tag: ref.Tag, SemVer: ref.SemVer, Name: ref.Name, Commit: ref.Commit}
}

// withoutGitDir also drops the checkout's .git directory, whatever the
// ignore rules say (a negated pattern must not publish the repository
// metadata, credentials in its config included).
func withoutGitDir(f archive.Filter) archive.Filter {
	return func(p string, isDir bool) bool {
		return p == ".git" || f(p, isDir)
	}
}
