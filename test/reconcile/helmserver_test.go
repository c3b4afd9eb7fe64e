package reconcile

import (
	"context"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/repo"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// Credentials the authenticated Helm repository accepts.
const (
	helmUser = "helm-user"
	helmPass = "helm-s3cret"
)

// helmRepoServer is a real Helm chart repository on loopback: chart
// packages saved with the Helm SDK and an index.yaml generated with
// repo.IndexDirectory, served over HTTP, with basic auth when auth is set.
type helmRepoServer struct {
	t   *testing.T
	dir string
	srv *httptest.Server
}

func newHelmRepoServer(t *testing.T, auth bool) *helmRepoServer {
	t.Helper()
	s := &helmRepoServer{t: t, dir: t.TempDir()}
	files := http.FileServer(http.Dir(s.dir))
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if auth {
			if u, p, ok := r.BasicAuth(); !ok || u != helmUser || p != helmPass {
				w.Header().Set("WWW-Authenticate", `Basic realm="helm"`)
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
		}
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

// URL is the repository URL a HelmRepository names.
func (s *helmRepoServer) URL() string { return s.srv.URL }

// helmChartSpec describes a chart to publish.
type helmChartSpec struct {
	name, version string
	values        string
	// files are extra chart files, path → content.
	files map[string][]byte
}

// helmNewChart builds a chart in memory with the Helm SDK types.
func helmNewChart(t *testing.T, c helmChartSpec) *chart.Chart {
	t.Helper()
	if c.values == "" {
		c.values = "replicas: 1\n"
	}
	vals := map[string]any{}
	if err := yaml.Unmarshal([]byte(c.values), &vals); err != nil {
		t.Fatal(err)
	}
	ch := &chart.Chart{
		Metadata: &chart.Metadata{APIVersion: chart.APIVersionV2, Name: c.name, Version: c.version, AppVersion: "1.0", Type: "application"},
		Templates: []*chart.File{{Name: "templates/configmap.yaml",
			Data: []byte("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\ndata:\n  replicas: {{ .Values.replicas | quote }}\n")}},
		Raw:    []*chart.File{{Name: chartutil.ValuesfileName, Data: []byte(c.values)}},
		Values: vals,
	}
	for p, data := range c.files {
		ch.Files = append(ch.Files, &chart.File{Name: p, Data: data})
	}
	return ch
}

// publish packages the chart into the repository with chartutil.Save and
// regenerates index.yaml with repo.IndexDirectory. It returns the
// package's path.
func (s *helmRepoServer) publish(c helmChartSpec) string {
	s.t.Helper()
	p, err := chartutil.Save(helmNewChart(s.t, c), s.dir)
	if err != nil {
		s.t.Fatal(err)
	}
	idx, err := repo.IndexDirectory(s.dir, s.srv.URL)
	if err != nil {
		s.t.Fatal(err)
	}
	idx.SortEntries()
	if err := idx.WriteFile(filepath.Join(s.dir, "index.yaml"), 0o644); err != nil {
		s.t.Fatal(err)
	}
	return p
}

// indexBytes is the index.yaml as served.
func (s *helmRepoServer) indexBytes() []byte {
	s.t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dir, "index.yaml"))
	if err != nil {
		s.t.Fatal(err)
	}
	return b
}

// helmRandom is incompressible data, for charts over the size limit.
func helmRandom(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func helmNamespace(t *testing.T) string {
	t.Helper()
	return namespaceFor(t, "helm")
}

// newHelmRepository creates a HelmRepository with a long interval.
func newHelmRepository(t *testing.T, ns, name, url string, mutate func(*sourcev1.HelmRepository)) *sourcev1.HelmRepository {
	t.Helper()
	obj := &sourcev1.HelmRepository{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: sourcev1.HelmRepositorySpec{
			URL:      url,
			Interval: metav1.Duration{Duration: time.Hour},
			Timeout:  &metav1.Duration{Duration: 20 * time.Second},
		},
	}
	return createObject(t, obj, mutate)
}

// newHelmChart creates a HelmChart with a long interval.
func newHelmChart(t *testing.T, ns, name, kind, source, chartName string, mutate func(*sourcev1.HelmChart)) *sourcev1.HelmChart {
	t.Helper()
	obj := &sourcev1.HelmChart{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: sourcev1.HelmChartSpec{
			Chart:     chartName,
			SourceRef: sourcev1.LocalHelmChartSourceReference{Kind: kind, Name: source},
			Interval:  metav1.Duration{Duration: time.Hour},
		},
	}
	return createObject(t, obj, mutate)
}

func newHelmSecret(t *testing.T, ns, name string, data map[string]string) {
	t.Helper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, StringData: data}
	if err := env.Client.Create(context.Background(), s); err != nil {
		t.Fatal(err)
	}
}

// The Helm kinds' forms of the generic helpers (main_test.go), on the
// object itself rather than its name.

func helmWaitFor[O sourceObject](t *testing.T, obj O, timeout time.Duration, what string, cond func(O) bool) O {
	t.Helper()
	return waitForObject(t, obj.GetNamespace(), obj.GetName(), timeout, what, cond)
}

func helmReady[O sourceObject](t *testing.T, obj O, revision string) O {
	t.Helper()
	return waitReady[O](t, obj.GetNamespace(), obj.GetName(), revision)
}

func helmFailedWith[O sourceObject](t *testing.T, obj O, cond, reason string) O {
	t.Helper()
	return waitFailed[O](t, obj.GetNamespace(), obj.GetName(), cond, reason)
}

func helmRequestReconcile[O client.Object](t *testing.T, obj O) {
	t.Helper()
	requestReconcileOf[O](t, obj.GetNamespace(), obj.GetName())
}
