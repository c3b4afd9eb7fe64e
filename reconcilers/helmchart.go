package reconcilers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/cache"
	"github.com/fluxcd/pkg/runtime/conditions"
	"github.com/fluxcd/pkg/runtime/patch"
	"github.com/fluxcd/pkg/runtime/predicates"
	rreconcile "github.com/fluxcd/pkg/runtime/reconcile"
	"github.com/fluxcd/pkg/tar"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	helmsrc "github.com/sourceraft/sourceraft/sources/helm"
	"github.com/sourceraft/sourceraft/storage"
)

// helmChartKind is HelmChart to the shared reconcile flow.
var helmChartKind = sourceKind[*sourcev1.HelmChart]{
	name:                   sourcev1.HelmChartKind,
	conds:                  helmChartConditions,
	newObject:              func() *sourcev1.HelmChart { return &sourcev1.HelmChart{} },
	suspended:              func(o *sourcev1.HelmChart) bool { return o.Spec.Suspend },
	observedGeneration:     func(o *sourcev1.HelmChart) int64 { return o.Status.ObservedGeneration },
	lastHandledReconcileAt: func(o *sourcev1.HelmChart) string { return o.Status.GetLastHandledReconcileRequest() },
	setArtifact:            func(o *sourcev1.HelmChart, a *meta.Artifact) { o.Status.Artifact, o.Status.URL = a, statusURL(a) },
}

// helmChartSourceIndexKey indexes HelmCharts by "<kind>/<name>" of their
// source, to find the charts of a source that changed.
const helmChartSourceIndexKey = ".spec.sourceRef"

// helmRepositoryURLIndexKey indexes HelmRepositories by their normalised
// URL (http(s) with a trailing slash, oci:// of an oci HelmRepository
// without), to find the one a chart dependency's repository is (Flux's
// .metadata.helmRepositoryURL).
const helmRepositoryURLIndexKey = ".spec.url"

// HelmChartReconciler reconciles source.toolkit.fluxcd.io/v1 HelmChart
// objects into chart packages in the replicated store: pulled from an
// HTTP(S) HelmRepository (the version picked from the repository's index
// artifact in the store) or from the registry of an oci HelmRepository
// (the version picked from its tags), or loaded from a GitRepository or
// Bucket artifact in the store and packaged with the Helm SDK.
type HelmChartReconciler struct {
	// Client writes only while this replica leads (see leaderclient.go).
	client.Client
	*notifier
	store *artifactStore

	ControllerName    string
	RequeueDependency time.Duration
	// ArchiveMaxSize bounds the extraction of a GitRepository or Bucket
	// artifact; zero is package tar's default.
	ArchiveMaxSize int64
	// IndexMaxSize bounds a HelmRepository index read from the store and
	// ChartMaxSize a downloaded chart; zero is Flux's default.
	IndexMaxSize int64
	ChartMaxSize int64
	// TokenCache keeps cloud registry credentials; nil is no caching.
	TokenCache *cache.TokenCache

	// indexes shares the parsed index artifacts between reconciles.
	indexes *helmIndexCache
}

// helmChartState is what the sub-reconcilers of one reconcile share.
type helmChartState struct {
	// dir is the temporary working directory.
	dir string
	// build is the chart build, set by reconcileSource.
	build *helmsrc.Build
}

type helmChartStep = step[*sourcev1.HelmChart, helmChartState]

// SetupWithManager registers the reconciler, triggered by spec changes,
// by the reconcile.fluxcd.io/requestedAt annotation, and by a new
// artifact revision of the source.
func (r *HelmChartReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager, concurrent int) error {
	r.indexes = newHelmIndexCache(helmIndexCacheSize, r.loadIndexArtifact)
	if err := mgr.GetFieldIndexer().IndexField(ctx, &sourcev1.HelmChart{}, helmChartSourceIndexKey, func(o client.Object) []string {
		hc := o.(*sourcev1.HelmChart)
		return []string{hc.Spec.SourceRef.Kind + "/" + hc.Spec.SourceRef.Name}
	}); err != nil {
		return fmt.Errorf("index HelmCharts by source: %w", err)
	}
	if err := mgr.GetFieldIndexer().IndexField(ctx, &sourcev1.HelmRepository{}, helmRepositoryURLIndexKey, func(o client.Object) []string {
		repo := o.(*sourcev1.HelmRepository)
		parse := helmsrc.ParseRepositoryURL
		if repo.Spec.Type == sourcev1.HelmRepositoryTypeOCI {
			parse = helmsrc.ParseOCIURL
		}
		if u, err := parse(repo.Spec.URL); err == nil {
			return []string{u.String()}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("index HelmRepositories by URL: %w", err)
	}
	revisionChanged := builder.WithPredicates(predicate.Funcs{
		CreateFunc:  func(event.CreateEvent) bool { return false },
		DeleteFunc:  func(event.DeleteEvent) bool { return false },
		GenericFunc: func(event.GenericEvent) bool { return false },
		UpdateFunc: func(e event.UpdateEvent) bool {
			o, ok1 := e.ObjectOld.(sourceObject)
			n, ok2 := e.ObjectNew.(sourceObject)
			return ok1 && ok2 && n.GetArtifact() != nil && !o.GetArtifact().HasRevision(n.GetArtifact().Revision)
		},
	})
	return ctrl.NewControllerManagedBy(mgr).
		For(&sourcev1.HelmChart{}, builder.WithPredicates(
			predicate.Or(predicate.GenerationChangedPredicate{}, predicates.ReconcileRequestedPredicate{}),
		)).
		Watches(&sourcev1.HelmRepository{}, handler.EnqueueRequestsFromMapFunc(r.chartsOf(sourcev1.HelmRepositoryKind)), revisionChanged).
		Watches(&sourcev1.GitRepository{}, handler.EnqueueRequestsFromMapFunc(r.chartsOf(sourcev1.GitRepositoryKind)), revisionChanged).
		Watches(&sourcev1.Bucket{}, handler.EnqueueRequestsFromMapFunc(r.chartsOf(sourcev1.BucketKind)), revisionChanged).
		WithOptions(controller.Options{MaxConcurrentReconciles: concurrent}).
		Complete(r)
}

// chartsOf maps a source of kind to the HelmCharts built from it that
// have not observed its artifact revision yet.
func (r *HelmChartReconciler) chartsOf(kind string) handler.MapFunc {
	return func(ctx context.Context, o client.Object) []reconcile.Request {
		src, ok := o.(sourceObject)
		if !ok || src.GetArtifact() == nil {
			return nil
		}
		var list sourcev1.HelmChartList
		if err := r.List(ctx, &list, client.InNamespace(o.GetNamespace()),
			client.MatchingFields{helmChartSourceIndexKey: kind + "/" + o.GetName()}); err != nil {
			ctrl.LoggerFrom(ctx).Error(err, "failed to list HelmCharts for a source change", "kind", kind)
			return nil
		}
		var reqs []reconcile.Request
		for i := range list.Items {
			if !src.GetArtifact().HasRevision(list.Items[i].Status.ObservedSourceArtifactRevision) {
				reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
			}
		}
		return reqs
	}
}

// Reconcile runs the shared flow (source.go) in a fresh working
// directory: reconcileStorage, then reconcileSource and reconcileArtifact.
func (r *HelmChartReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	f := &sourceReconcile[*sourcev1.HelmChart, helmChartState]{
		kind: &helmChartKind, client: r.Client, notifier: r.notifier, store: r.store, fieldOwner: r.ControllerName,
		workDir:  true,
		newState: func(dir string) *helmChartState { return &helmChartState{dir: dir} },
		steps:    []helmChartStep{r.reconcileSource, r.reconcileArtifact},
		notify: func(ctx context.Context, oldObj, obj *sourcev1.HelmChart, st *helmChartState) {
			if st.build.Complete() {
				r.notifyBuild(ctx, oldObj, obj, st.build)
			}
		},
	}
	return f.reconcile(ctx, req)
}

// notifyBuild is notifySuccess with the build's reason, as Flux reports
// chart builds (ChartPullSucceeded or ChartPackageSucceeded).
func (r *HelmChartReconciler) notifyBuild(ctx context.Context, oldObj, obj *sourcev1.HelmChart, b *helmsrc.Build) {
	art := obj.GetArtifact()
	if art == nil {
		return
	}
	if !oldObj.GetArtifact().HasDigest(art.Digest) || failureRecovery(oldObj, obj, helmChartConditions) {
		r.AnnotatedEventf(obj, artifactAnnotations(art), corev1.EventTypeNormal, helmBuildReason(b), "%s", b.Summary())
		ctrl.LoggerFrom(ctx).Info(b.Summary(), "revision", art.Revision, "digest", art.Digest)
	}
}

// reconcileSource resolves the source and builds the chart from it into
// the working directory.
//
// Sets FetchFailed (source missing: retried; source without an artifact:
// waiting, without an event; chart or index not fetchable, version not
// found, chart over the size limit; an invalid chart reference also
// stalls) or BuildFailed (values files, version metadata, dependencies,
// packaging); removes both on success. Sets ArtifactOutdated, Reconciling
// and Ready=Unknown when the build differs from the stored artifact.
// With spec.verify, sets SourceVerified=True for a chart of an oci
// HelmRepository whose signature verified, False (VerificationError)
// when none did or the verification could not be configured; removes it
// without spec.verify.
func (r *HelmChartReconciler) reconcileSource(ctx context.Context, sp *patch.SerialPatcher, obj *sourcev1.HelmChart, st *helmChartState) (Result, error) {
	// A failed verification is recalculated; a successful one stays
	// until this build says otherwise.
	if conditions.IsFalse(obj, sourcev1.SourceVerifiedCondition) {
		conditions.Delete(obj, sourcev1.SourceVerifiedCondition)
	}
	if obj.Spec.Verify == nil {
		conditions.Delete(obj, sourcev1.SourceVerifiedCondition)
	}

	src, err := r.getSource(ctx, obj)
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			e = NewGeneric(fmt.Errorf("failed to get source: %w", err), "SourceUnavailable")
		}
		return fetchFailed(obj, e)
	}
	// An oci HelmRepository is static: it has no artifact to wait for
	// or to observe the revision of (Flux v1).
	repo, _ := src.(*sourcev1.HelmRepository)
	ociRepo := repo != nil && repo.Spec.Type == sourcev1.HelmRepositoryTypeOCI
	if !ociRepo {
		if src.GetArtifact() == nil {
			return fetchFailed(obj, NewWaiting(fmt.Errorf("no artifact available for %s source '%s'", obj.Spec.SourceRef.Kind, obj.Spec.SourceRef.Name),
				"NoSourceArtifact", r.RequeueDependency))
		}
		obj.Status.ObservedSourceArtifactRevision = src.GetArtifact().Revision
	}

	var b *helmsrc.Build
	switch {
	case ociRepo:
		b, err = r.buildFromOCIHelmRepository(ctx, obj, repo, st.dir)
	case repo != nil && obj.Spec.Verify != nil && obj.Spec.Verify.Provider != "":
		// As Flux: charts of an HTTP(S) repository cannot be verified,
		// and asking for it fails the build.
		err = &helmsrc.BuildError{Reason: helmsrc.ReasonChartVerification, Err: errors.New("chart verification error: not implemented")}
	case repo != nil:
		b, err = r.buildFromHelmRepository(ctx, obj, repo, st.dir)
	default:
		b, err = r.buildFromArtifact(ctx, obj, src.GetArtifact(), st.dir)
	}
	st.build = b

	if b.HasMetadata() && (b.Name != obj.Status.ObservedChartName || !obj.GetArtifact().HasRevision(b.Version)) {
		if obj.GetArtifact() != nil {
			conditions.MarkTrue(obj, sourcev1.ArtifactOutdatedCondition, "NewChart", "%s", b.Summary())
		}
		rreconcile.ProgressiveStatus(true, obj, meta.ProgressingReason, "building artifact: %s", b.Summary())
		if err := sp.Patch(ctx, obj, helmChartKind.patchOptions(r.ControllerName)...); err != nil {
			ctrl.LoggerFrom(ctx).Error(err, "failed to patch")
		}
	}
	if b.Complete() && b.Verified {
		conditions.MarkTrue(obj, sourcev1.SourceVerifiedCondition, meta.SucceededReason, "verified signature of version %s", b.Version)
	}
	if err != nil {
		var e *Error
		var be *helmsrc.BuildError
		switch {
		case errors.As(err, &e) && e.Reason == sourcev1.VerificationError:
			conditions.MarkFalse(obj, sourcev1.SourceVerifiedCondition, e.Reason, "%s", e)
		case errors.As(err, &e):
			conditions.MarkTrue(obj, sourcev1.FetchFailedCondition, e.Reason, "%s", e)
		case errors.As(err, &be) && be.Reason == helmsrc.ReasonChartVerification:
			// Flux reports a signature that does not verify as a failed
			// build, and as SourceVerified=False.
			e = NewGeneric(be, string(be.Reason))
			conditions.Delete(obj, sourcev1.FetchFailedCondition)
			conditions.MarkTrue(obj, sourcev1.BuildFailedCondition, e.Reason, "%s", e)
			conditions.MarkFalse(obj, sourcev1.SourceVerifiedCondition, sourcev1.VerificationError, "%s", e)
		case errors.As(err, &be):
			cond, stalls := helmBuildFailure(be.Reason)
			if stalls {
				e = NewStalling(be, string(be.Reason))
			} else {
				e = NewGeneric(be, string(be.Reason))
			}
			other := sourcev1.BuildFailedCondition
			if cond == sourcev1.BuildFailedCondition {
				other = sourcev1.FetchFailedCondition
			}
			conditions.Delete(obj, other)
			conditions.MarkTrue(obj, cond, e.Reason, "%s", e)
		default:
			e = NewGeneric(err, meta.FailedReason)
			conditions.MarkTrue(obj, sourcev1.FetchFailedCondition, e.Reason, "%s", e)
		}
		return ResultEmpty, e
	}
	conditions.Delete(obj, sourcev1.FetchFailedCondition)
	conditions.Delete(obj, sourcev1.BuildFailedCondition)
	return ResultSuccess, nil
}

// getSource returns the source object of the chart. A kind the API does
// not allow stalls; a source that cannot be read is retried.
func (r *HelmChartReconciler) getSource(ctx context.Context, obj *sourcev1.HelmChart) (sourceObject, error) {
	key := types.NamespacedName{Namespace: obj.Namespace, Name: obj.Spec.SourceRef.Name}
	var src interface {
		sourceObject
		client.Object
	}
	switch obj.Spec.SourceRef.Kind {
	case sourcev1.HelmRepositoryKind:
		src = &sourcev1.HelmRepository{}
	case sourcev1.GitRepositoryKind:
		src = &sourcev1.GitRepository{}
	case sourcev1.BucketKind:
		src = &sourcev1.Bucket{}
	default:
		return nil, NewStalling(fmt.Errorf("unsupported source kind '%s', must be one of: %v", obj.Spec.SourceRef.Kind,
			[]string{sourcev1.HelmRepositoryKind, sourcev1.GitRepositoryKind, sourcev1.BucketKind}), "UnsupportedSourceKind")
	}
	if err := r.Get(ctx, key, src); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, NewGeneric(fmt.Errorf("failed to get source: %w", err), "SourceUnavailable")
		}
		return nil, err
	}
	return src, nil
}

// upToDate reports whether the stored artifact already is the chart
// name at version, built for the current generation.
func helmUpToDate(obj *sourcev1.HelmChart, name, version string) bool {
	return obj.Generation == obj.Status.ObservedGeneration &&
		obj.Status.ObservedChartName == name && obj.GetArtifact().HasRevision(version)
}

// helmBuildFailure is the negative condition a failed build part sets,
// and whether retrying the same inputs cannot help (it stalls).
func helmBuildFailure(reason helmsrc.BuildErrorReason) (condition string, stalls bool) {
	switch reason {
	case helmsrc.ReasonMetadataPatch, helmsrc.ReasonValuesFiles:
		return sourcev1.BuildFailedCondition, true
	case helmsrc.ReasonDependencyBuild, helmsrc.ReasonChartPackage:
		// A dependency repository may answer next time, as Flux retries.
		return sourcev1.BuildFailedCondition, false
	case helmsrc.ReasonChartReference:
		return sourcev1.FetchFailedCondition, true
	}
	return sourcev1.FetchFailedCondition, false
}

// helmBuildReason is the condition and event reason of a complete build.
func helmBuildReason(b *helmsrc.Build) string {
	if b.Packaged {
		return sourcev1.ChartPackageSucceededReason
	}
	return sourcev1.ChartPullSucceededReason
}

// helmBuildOptions are the build options of obj, building into dir.
func helmBuildOptions(obj *sourcev1.HelmChart, dir string) helmsrc.BuildOptions {
	return helmsrc.BuildOptions{
		ValuesFiles: obj.GetValuesFiles(), IgnoreMissingValuesFiles: obj.Spec.IgnoreMissingValuesFiles,
		UpToDate: func(name, version string) bool { return helmUpToDate(obj, name, version) },
		Dir:      dir,
	}
}

// buildFromHelmRepository picks the chart version from the repository's
// index artifact in the store, downloads the chart from the repository
// with its credentials and, when values files are set, merges them and
// repackages it.
func (r *HelmChartReconciler) buildFromHelmRepository(ctx context.Context, obj *sourcev1.HelmChart, repoObj *sourcev1.HelmRepository, dir string) (*helmsrc.Build, error) {
	base, err := helmsrc.ParseRepositoryURL(repoObj.Spec.URL)
	if err != nil {
		return nil, NewStalling(err, sourcev1.URLInvalidReason)
	}
	hc, err := newHelmRepoClient(ctx, r.Client, repoObj, base)
	if err != nil {
		return nil, NewGeneric(err, sourcev1.AuthenticationFailedReason)
	}
	defer hc.Close()

	idx, err := r.indexes.get(ctx, repoObj.GetArtifact())
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return nil, NewWaiting(fmt.Errorf("index artifact of HelmRepository '%s' is not in storage: %w", repoObj.Name, err),
				"NoSourceArtifact", r.RequeueDependency)
		}
		return nil, &helmsrc.BuildError{Reason: helmsrc.ReasonChartPull, Err: fmt.Errorf("could not load repository index for remote chart reference: %w", err)}
	}
	fetchCtx, cancel := context.WithTimeout(ctx, helmTimeout(repoObj))
	defer cancel()
	b, err := helmsrc.BuildFromRepository(fetchCtx, hc, idx, r.remoteBuildOptions(obj, dir))
	if b != nil && b.UpToDate {
		b.ValuesFiles = obj.Status.ObservedValuesFiles
	}
	return b, err
}

// remoteBuildOptions are the options of a build of obj's chart from a
// repository (HTTP or OCI), building into dir.
func (r *HelmChartReconciler) remoteBuildOptions(obj *sourcev1.HelmChart, dir string) helmsrc.RemoteBuildOptions {
	return helmsrc.RemoteBuildOptions{
		BuildOptions: helmBuildOptions(obj, dir),
		Chart:        obj.Spec.Chart, Version: obj.Spec.Version,
		VersionMetadata: strconv.FormatInt(obj.Generation, 10),
		MaxSize:         helmsrc.Limits{ChartMaxSize: r.ChartMaxSize}.Chart(),
	}
}

// loadIndexArtifact reads a HelmRepository's index artifact from the
// store, bounded by the index size limit, into the lookups charts need;
// the copy it parses, one chart at a time, is on disk.
func (r *HelmChartReconciler) loadIndexArtifact(ctx context.Context, m *meta.Artifact) (*helmsrc.Index, error) {
	a, err := fromStatus(m)
	if err != nil {
		return nil, err
	}
	rc, err := r.store.Retrieve(ctx, a)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	f, err := os.CreateTemp("", "helmchart-index-*.json")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	max := helmsrc.Limits{IndexMaxSize: r.IndexMaxSize}.Index()
	n, err := io.Copy(f, io.LimitReader(rc, max+1))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	if n > max {
		return nil, fmt.Errorf("index artifact %s %w of %d bytes", a.Path(), helmsrc.ErrTooLarge, max)
	}
	return helmsrc.LoadIndex(f.Name())
}

// buildFromArtifact extracts a GitRepository or Bucket artifact from the
// store, loads the chart at spec.chart (a directory or a packaged chart),
// applies the reconcile strategy and values files, adds a directory's
// missing dependencies (remote ones through dependencyRepository and
// dependencyRegistry), and packages it.
func (r *HelmChartReconciler) buildFromArtifact(ctx context.Context, obj *sourcev1.HelmChart, src *meta.Artifact, dir string) (*helmsrc.Build, error) {
	sourceDir := filepath.Join(dir, "source")
	if err := os.Mkdir(sourceDir, 0o700); err != nil {
		return nil, NewGeneric(fmt.Errorf("failed to create directory to untar source into: %w", err), sourcev1.DirCreationFailedReason)
	}
	if err := r.extractArtifact(ctx, src, sourceDir); err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return nil, NewWaiting(fmt.Errorf("artifact of %s '%s' is not in storage: %w", obj.Spec.SourceRef.Kind, obj.Spec.SourceRef.Name, err),
				"NoSourceArtifact", r.RequeueDependency)
		}
		return nil, NewGeneric(fmt.Errorf("artifact untar error: %w", err), meta.FailedReason)
	}

	var metadata []string
	if obj.Spec.ReconcileStrategy == sourcev1.ReconcileStrategyRevision {
		metadata = append(metadata, helmsrc.ShortRevision(src.Revision))
	}
	if len(obj.GetValuesFiles()) > 0 {
		metadata = append(metadata, strconv.FormatInt(obj.Generation, 10))
	}
	limits := helmsrc.Limits{IndexMaxSize: r.IndexMaxSize, ChartMaxSize: r.ChartMaxSize}
	deps := helmsrc.NewHTTPFetcher(r.dependencyRepository(obj.Namespace), limits)
	defer deps.Close()
	ociDeps := helmsrc.NewOCIFetcher(r.dependencyRegistry(obj), limits)
	defer ociDeps.Close()
	b, err := helmsrc.BuildFromDirectory(ctx, sourceDir, helmsrc.LocalBuildOptions{
		BuildOptions: helmBuildOptions(obj, dir),
		Chart:        obj.Spec.Chart, SourceKind: obj.Spec.SourceRef.Kind,
		VersionMetadata: strings.Join(metadata, "."),
		Dependencies:    helmsrc.Dependencies{"http": deps, "https": deps, "oci": ociDeps},
	})
	if b != nil && b.UpToDate {
		b.ValuesFiles = obj.Status.ObservedValuesFiles
	}
	return b, err
}

// dependencyRepository opens the repository of a chart dependency as
// Flux's namespacedChartRepositoryCallback does: the HelmRepository in
// namespace ns with the same URL (the first by name when several) gives
// its credentials and its index artifact (shared with the HelmCharts of
// that repository); without one the repository is anonymous and its index
// fetched.
func (r *HelmChartReconciler) dependencyRepository(ns string) helmsrc.RepositoryOpener {
	return func(ctx context.Context, base *url.URL) (*helmsrc.Client, *helmsrc.Index, error) {
		repoObj, err := r.repositoryOfURL(ctx, ns, base)
		if err != nil {
			return nil, nil, err
		}
		if repoObj == nil {
			return helmsrc.NewClient(base, helmsrc.ClientOptions{Timeout: helmsrc.AnonymousTimeout}), nil, nil
		}
		hc, err := newHelmRepoClient(ctx, r.Client, repoObj, base)
		if err != nil {
			return nil, nil, fmt.Errorf("HelmRepository '%s': %w", repoObj.Name, err)
		}
		if a := repoObj.GetArtifact(); a != nil {
			idx, err := r.indexes.get(ctx, a)
			switch {
			case err == nil:
				return hc, idx, nil
			case !errors.Is(err, storage.ErrNotFound):
				hc.Close()
				return nil, nil, fmt.Errorf("could not load the index of HelmRepository '%s': %w", repoObj.Name, err)
			}
		}
		return hc, nil, nil
	}
}

// dependencyRegistry opens the registry of an oci:// chart dependency as
// Flux's namespacedChartRepositoryCallback does: the oci HelmRepository
// in obj's namespace with the same URL (the first by name when several)
// gives its secretRef, provider, certSecretRef, insecure and timeout;
// without one the registry is asked anonymously over HTTPS.
func (r *HelmChartReconciler) dependencyRegistry(obj *sourcev1.HelmChart) helmsrc.OCIOpener {
	return func(ctx context.Context, u *url.URL) (*helmsrc.OCIClient, error) {
		repoObj, err := r.repositoryOfURL(ctx, obj.Namespace, u)
		if err != nil {
			return nil, err
		}
		if repoObj == nil {
			return helmsrc.NewOCIClient(u, helmsrc.OCIOptions{Timeout: helmsrc.AnonymousTimeout}), nil
		}
		oc, err := newHelmOCIClient(ctx, r.Client, repoObj, r.registryAuthOptions(obj)...)
		if err != nil {
			// A dependency's repository fails the build, as a
			// DependencyBuildError: not with the reason it has as a
			// chart's source.
			var e *Error
			if errors.As(err, &e) {
				err = e.Err
			}
			return nil, fmt.Errorf("HelmRepository '%s': %w", repoObj.Name, err)
		}
		return oc, nil
	}
}

// repositoryOfURL is the HelmRepository in namespace ns whose URL is u,
// the first by name when several are (Flux takes any one); nil when none is.
func (r *HelmChartReconciler) repositoryOfURL(ctx context.Context, ns string, u *url.URL) (*sourcev1.HelmRepository, error) {
	var list sourcev1.HelmRepositoryList
	if err := r.List(ctx, &list, client.InNamespace(ns), client.MatchingFields{helmRepositoryURLIndexKey: u.String()}); err != nil {
		return nil, fmt.Errorf("unable to retrieve HelmRepositoryList: %w", err)
	}
	if len(list.Items) == 0 {
		return nil, nil
	}
	repoObj := slices.MinFunc(list.Items, func(a, b sourcev1.HelmRepository) int { return strings.Compare(a.Name, b.Name) })
	return &repoObj, nil
}

// extractArtifact untars a source artifact from the store into dir,
// bounded like GitRepository includes and without symlinks.
func (r *HelmChartReconciler) extractArtifact(ctx context.Context, m *meta.Artifact, dir string) error {
	a, err := fromStatus(m)
	if err != nil {
		return err
	}
	rc, err := r.store.Retrieve(ctx, a)
	if err != nil {
		return fmt.Errorf("retrieve %s: %w", a.Path(), err)
	}
	defer rc.Close()
	opts := []tar.Option{tar.WithSkipSymlinks()}
	if r.ArchiveMaxSize > 0 {
		opts = append(opts, tar.WithMaxUntarSize(int(r.ArchiveMaxSize)))
	}
	return tar.Untar(rc, dir, opts...)
}

// reconcileArtifact stores the built chart as <name>-<version>.tgz unless
// the stored artifact already is this build, records it in the status and
// collects superseded artifacts.
//
// Sets StorageOperationFailed (the store refused the artifact); removes it
// and ArtifactOutdated on success, and sets ArtifactInStorage=True when
// the status names the built chart.
func (r *HelmChartReconciler) reconcileArtifact(ctx context.Context, _ *patch.SerialPatcher, obj *sourcev1.HelmChart, st *helmChartState) (Result, error) {
	b := st.build
	if !b.Complete() {
		return ResultEmpty, NewGeneric(errors.New("chart build did not complete"), meta.FailedReason)
	}
	defer func() {
		if obj.Status.ObservedChartName == b.Name && obj.GetArtifact().HasRevision(b.Version) {
			conditions.Delete(obj, sourcev1.ArtifactOutdatedCondition)
			conditions.MarkTrue(obj, sourcev1.ArtifactInStorageCondition, helmBuildReason(b), "%s", b.Summary())
		}
	}()
	if b.UpToDate {
		r.notifyUpToDate(obj, b.Version)
		return ResultSuccess, nil
	}

	// A chart of an oci HelmRepository may be named <path>/<name>; the
	// store keeps one file name per artifact.
	art := newArtifactFor(sourcev1.HelmChartKind, obj, b.Version, path.Base(b.Name)+"-"+b.Version+".tgz")
	if err := r.store.storeFile(ctx, &art, b.Path); err != nil {
		e := NewGeneric(fmt.Errorf("unable to copy Helm chart to storage: %w", err), sourcev1.ArchiveOperationFailedReason)
		conditions.MarkTrue(obj, sourcev1.StorageOperationFailedCondition, e.Reason, "%s", e)
		return ResultEmpty, e
	}
	conditions.Delete(obj, sourcev1.StorageOperationFailedCondition)

	// The artifact is committed: only now may the status name it.
	helmChartKind.setArtifact(obj, r.store.toStatus(art))
	obj.Status.ObservedChartName = b.Name
	if obj.Spec.IgnoreMissingValuesFiles {
		obj.Status.ObservedValuesFiles = b.ValuesFiles
	} else {
		obj.Status.ObservedValuesFiles = nil
	}

	return ResultSuccess, nil
}
