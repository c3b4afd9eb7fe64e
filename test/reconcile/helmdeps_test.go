package reconcile

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sourceraft/sourceraft/internal/helmserver"
	"github.com/sourceraft/sourceraft/internal/ociregistry"
	helmsrc "github.com/sourceraft/sourceraft/sources/helm"
)

// switchableRepository is a Helm repository in front of a real one that
// a test turns bad: with a status set it answers every request with it,
// with garbage set it serves garbage as the index.
type switchableRepository struct {
	*httptest.Server
	status  atomic.Int32
	garbage atomic.Bool
}

func newSwitchableRepository(t *testing.T, backend string) *switchableRepository {
	t.Helper()
	u, err := url.Parse(backend)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(u)
	s := &switchableRepository{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case s.status.Load() != 0:
			http.Error(w, "switched off", int(s.status.Load()))
		case s.garbage.Load():
			w.Write([]byte("\x00\x01 not an index {{{"))
		default:
			proxy.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

// helmDepsChart is a chart directory depending on deps (Chart.yaml
// dependency entries).
func helmDepsChart(version, deps string) map[string]string {
	return map[string]string{
		"charts/app/Chart.yaml":               "apiVersion: v2\nname: app\nversion: " + version + "\ndependencies:\n" + deps,
		"charts/app/values.yaml":              "replicas: 1\n",
		"charts/app/templates/configmap.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\n",
	}
}

func helmSubcharts(t *testing.T, o *sourcev1.HelmChart) map[string]string {
	t.Helper()
	ch, _ := helmLoadArtifact(t, o)
	got := map[string]string{}
	for _, d := range ch.Dependencies() {
		got[d.Name()] = d.Metadata.Version
	}
	return got
}

// TestHelmChartRemoteDependencies packages a GitRepository chart with
// dependencies in Helm repositories: a SemVer range resolved to the
// newest match in an anonymous repository, an aliased chart from a
// repository needing basic auth, with the credentials of the
// HelmRepository of its URL in the namespace. A rebuild of the same
// inputs stores the same digest; every bad dependency afterwards is a
// BuildFailed DependencyBuildError that keeps the previous artifact.
func TestHelmChartRemoteDependencies(t *testing.T) {
	ns := helmNamespace(t)
	public := helmserver.Start(t, false)
	for _, v := range []string{"1.0.0", "1.2.0", "1.3.0-rc.1", "2.0.0"} {
		public.Publish(helmserver.ChartSpec{Name: "redis", Version: v})
	}
	repo := newSwitchableRepository(t, public.URL())
	private := helmserver.Start(t, true)
	private.Publish(helmserver.ChartSpec{Name: "common", Version: "0.5.0"})

	deps := fmt.Sprintf("- name: redis\n  version: ^1.0.0\n  repository: %s\n"+
		"- name: common\n  alias: base\n  version: 0.5.x\n  repository: %s/\n", repo.URL, private.URL())
	gitRepo := gitSrv.newRepo(t, "public", "helm-deps-"+ns)
	sha := gitRepo.commit("chart", helmDepsChart("0.1.0", deps))
	gr := newGitRepository(t, ns, "source", gitRepo.URL, nil)
	readyAt(t, ns, "source", "master@sha1:"+sha)

	// Without a HelmRepository for its URL the private repository is
	// asked anonymously.
	hc := newHelmChart(t, ns, "umbrella", sourcev1.GitRepositoryKind, "source", "charts/app", nil)
	helmWaitFor(t, hc, 60*time.Second, "a 401 DependencyBuildError", func(o *sourcev1.HelmChart) bool {
		return conditions.GetReason(o, sourcev1.BuildFailedCondition) == string(helmsrc.ReasonDependencyBuild) &&
			strings.Contains(conditions.GetMessage(o, sourcev1.BuildFailedCondition), "401")
	})
	newHelmSecret(t, ns, "creds", map[string]string{"username": helmserver.User, "password": helmserver.Password})
	helmReady(t, newHelmRepository(t, ns, "private", private.URL(), func(o *sourcev1.HelmRepository) {
		o.Spec.SecretRef = &meta.LocalObjectReference{Name: "creds"}
	}), "")
	helmRequestReconcile(t, hc)
	o := helmReady(t, hc, "0.1.0")
	helmCheckChartArtifact(t, o, "app", "0.1.0")
	if r := conditions.GetReason(o, sourcev1.ArtifactInStorageCondition); r != sourcev1.ChartPackageSucceededReason {
		t.Errorf("ArtifactInStorage reason %q, want %s", r, sourcev1.ChartPackageSucceededReason)
	}
	if got := helmSubcharts(t, o); len(got) != 2 || got["redis"] != "1.2.0" || got["base"] != "0.5.0" {
		t.Fatalf("subcharts %v, want redis 1.2.0 and base 0.5.0", got)
	}
	fetchFromEveryReplica(t, o.Status.Artifact)
	prev := o.Status.Artifact.DeepCopy()

	// A new generation rebuilds the same inputs into the same digest.
	rebuild := func() {
		t.Helper()
		updateSpec(t, hc, func(o *sourcev1.HelmChart) { o.Spec.Interval.Duration += time.Minute })
	}
	rebuild()
	o = helmWaitFor(t, hc, 60*time.Second, "the new generation built", func(o *sourcev1.HelmChart) bool {
		return o.Status.ObservedGeneration == o.Generation && conditions.IsReady(o)
	})
	if o.Status.Artifact.Digest != prev.Digest {
		t.Fatalf("the same chart and dependencies rebuilt into %s, was %s", o.Status.Artifact.Digest, prev.Digest)
	}

	failsWith := func(what string) {
		t.Helper()
		o := helmWaitFor(t, hc, 60*time.Second, "BuildFailed "+what, func(o *sourcev1.HelmChart) bool {
			return conditions.IsTrue(o, sourcev1.BuildFailedCondition) &&
				conditions.GetReason(o, sourcev1.BuildFailedCondition) == string(helmsrc.ReasonDependencyBuild) &&
				strings.Contains(conditions.GetMessage(o, sourcev1.BuildFailedCondition), what) &&
				conditions.IsFalse(o, meta.ReadyCondition) && !conditions.Has(o, meta.StalledCondition)
		})
		if o.Status.Artifact == nil || o.Status.Artifact.Digest != prev.Digest {
			t.Fatalf("%s: previous artifact not kept: %+v", what, o.Status.Artifact)
		}
		download(t, o.Status.Artifact)
	}
	for _, status := range []int{http.StatusNotFound, http.StatusInternalServerError} {
		repo.status.Store(int32(status))
		rebuild()
		failsWith(fmt.Sprintf("%d %s", status, http.StatusText(status)))
	}
	repo.status.Store(0)
	repo.garbage.Store(true)
	rebuild()
	failsWith("failed to load repository index")
	repo.garbage.Store(false)

	// New chart versions in the source with bad dependencies.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String()
	l.Close()
	for i, bad := range []struct{ deps, want string }{
		{"- name: redis\n  version: 1.0.0\n  repository: " + closed + "\n", "connection refused"},
		{"- name: redis\n  version: '>=5.0.0'\n  repository: " + repo.URL + "\n", "no 'redis' chart with version matching '>=5.0.0' found"},
		{"- name: app\n  repository: file://.\n", "dependency cycle"},
		{"- name: lib\n  repository: file://../lib\n", "no chart found at '../lib'"},
		{"- name: redis\n  version: 1.0.0\n  repository: '@stable'\n", "aliased repository dependency is not supported"},
		// An oci:// dependency without an oci HelmRepository of its URL:
		// asked anonymously.
		{"- name: redis\n  version: 1.0.0\n  repository: oci://" + strings.TrimPrefix(closed, "http://") + "/charts\n", "connection refused"},
	} {
		sha := gitRepo.commit("bad dependency", helmDepsChart(fmt.Sprintf("0.%d.0", i+2), bad.deps))
		helmRequestReconcile(t, gr)
		readyAt(t, ns, "source", "master@sha1:"+sha)
		failsWith(bad.want)
	}
	for _, a := range storedOf[*sourcev1.HelmChart](t, ns, "umbrella") {
		if a.Revision != "0.1.0" {
			t.Fatalf("a failed build stored %s", a.Path())
		}
	}

	// Fixed again: the newest match, now from a new index.
	public.Publish(helmserver.ChartSpec{Name: "redis", Version: "1.4.0"})
	gitRepo.commit("fixed", helmDepsChart("0.9.0", deps))
	helmRequestReconcile(t, gr)
	o = helmReady(t, hc, "0.9.0")
	if got := helmSubcharts(t, o); got["redis"] != "1.4.0" || got["base"] != "0.5.0" {
		t.Fatalf("subcharts %v, want redis 1.4.0 and base 0.5.0", got)
	}
}

// TestHelmChartOCIDependencies packages a GitRepository chart with an
// oci:// dependency in a registry behind basic auth: asked anonymously
// it fails; with the credentials of the oci HelmRepository of its URL
// (spelt with a trailing slash) in the namespace, the SemVer range
// resolves to the newest matching tag and the packaged chart is served
// digest-checked by every replica. Wrong credentials or a missing
// secret afterwards are a BuildFailed DependencyBuildError that keeps
// the previous artifact.
func TestHelmChartOCIDependencies(t *testing.T) {
	ns := helmNamespace(t)
	reg := ociregistry.Shared(t).Private
	repo := "helmdeps/" + ns
	for _, v := range []string{"1.0.0", "1.2.0", "1.3.0-rc.1", "2.0.0"} {
		helmPushChart(t, reg, repo, v, helmserver.ChartSpec{Name: "redis", Version: v})
	}
	gitRepo := gitSrv.newRepo(t, "public", "helm-oci-deps-"+ns)
	sha := gitRepo.commit("chart", helmDepsChart("0.1.0",
		"- name: redis\n  version: ^1.0.0\n  repository: "+reg.URL(repo)+"\n"))
	newGitRepository(t, ns, "source", gitRepo.URL, nil)
	readyAt(t, ns, "source", "master@sha1:"+sha)

	// Without an oci HelmRepository of its URL the registry is asked
	// anonymously, over HTTPS, which this plain HTTP registry cannot answer.
	hc := newHelmChart(t, ns, "umbrella", sourcev1.GitRepositoryKind, "source", "charts/app", nil)
	helmFailedWithMessage(t, hc, sourcev1.BuildFailedCondition, string(helmsrc.ReasonDependencyBuild), "HTTP response to HTTPS client")

	newHelmSecret(t, ns, "creds", map[string]string{"username": ociregistry.User, "password": ociregistry.Password})
	newHelmSecret(t, ns, "wrong", map[string]string{"username": ociregistry.User, "password": "wrong"})
	registry := helmOCIRepository(t, ns, "registry", reg.URL(repo)+"/", func(o *sourcev1.HelmRepository) {
		o.Spec.SecretRef = &meta.LocalObjectReference{Name: "creds"}
	})
	helmRequestReconcile(t, hc)
	o := helmReady(t, hc, "0.1.0")
	helmCheckChartArtifact(t, o, "app", "0.1.0")
	if got := helmSubcharts(t, o); len(got) != 1 || got["redis"] != "1.2.0" {
		t.Fatalf("subcharts %v, want redis 1.2.0", got)
	}
	fetchFromEveryReplica(t, o.Status.Artifact)
	prev := o.Status.Artifact.DeepCopy()

	// The manager's cache may still hold the previous HelmRepository or
	// secret for a reconcile: rebuild until a generation fails with msg.
	failsWith := func(msg string) {
		t.Helper()
		var o *sourcev1.HelmChart
		for range 5 {
			updateSpec(t, hc, func(o *sourcev1.HelmChart) { o.Spec.Interval.Duration += time.Minute })
			o = helmWaitFor(t, hc, 60*time.Second, "the new generation reconciled", func(o *sourcev1.HelmChart) bool {
				ready := conditions.Get(o, meta.ReadyCondition)
				return ready != nil && ready.ObservedGeneration == o.Generation &&
					(ready.Status == metav1.ConditionTrue || conditions.IsTrue(o, sourcev1.BuildFailedCondition))
			})
			if strings.Contains(conditions.GetMessage(o, sourcev1.BuildFailedCondition), msg) {
				break
			}
		}
		if conditions.GetReason(o, sourcev1.BuildFailedCondition) != string(helmsrc.ReasonDependencyBuild) ||
			!strings.Contains(conditions.GetMessage(o, sourcev1.BuildFailedCondition), msg) ||
			!conditions.IsFalse(o, meta.ReadyCondition) || conditions.Has(o, meta.StalledCondition) {
			t.Fatalf("want a DependencyBuildError with %q: BuildFailed %q %q, Ready %v, Stalled %v", msg,
				conditions.GetReason(o, sourcev1.BuildFailedCondition), conditions.GetMessage(o, sourcev1.BuildFailedCondition),
				conditions.Get(o, meta.ReadyCondition), conditions.Get(o, meta.StalledCondition))
		}
		if o.Status.Artifact == nil || o.Status.Artifact.Digest != prev.Digest {
			t.Fatalf("%s: previous artifact not kept: %+v", msg, o.Status.Artifact)
		}
		download(t, o.Status.Artifact)
	}
	for secret, msg := range map[string]string{"wrong": "authentication failed", "absent": "failed to get secret"} {
		updateSpec(t, registry, func(o *sourcev1.HelmRepository) {
			o.Spec.SecretRef = &meta.LocalObjectReference{Name: secret}
		})
		failsWith(msg)
	}
	for _, a := range storedOf[*sourcev1.HelmChart](t, ns, "umbrella") {
		if a.Revision != "0.1.0" {
			t.Fatalf("a failed build stored %s", a.Path())
		}
	}
}
