// Package helmserver serves a real Helm chart repository on loopback for
// tests: chart packages saved with the Helm SDK and an index.yaml
// generated with repo.IndexDirectory, over HTTP, with basic auth (User,
// Password) when asked for.
package helmserver

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/repo"
	"sigs.k8s.io/yaml"
)

// Credentials an authenticated repository accepts.
const (
	User     = "helm-user"
	Password = "helm-s3cret"
)

// Server is one chart repository, closed when its test ends.
type Server struct {
	t   testing.TB
	dir string
	srv *httptest.Server
}

// Start serves an empty repository; with auth, every request needs basic
// auth User/Password.
func Start(t testing.TB, auth bool) *Server {
	t.Helper()
	s := &Server{t: t, dir: t.TempDir()}
	files := http.FileServer(http.Dir(s.dir))
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if auth {
			if u, p, ok := r.BasicAuth(); !ok || u != User || p != Password {
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

// URL is the repository URL.
func (s *Server) URL() string { return s.srv.URL }

// ChartSpec describes a chart to publish.
type ChartSpec struct {
	Name, Version string
	// Values is the values.yaml; empty is "replicas: 1".
	Values string
	// Files are extra chart files, path → content.
	Files map[string][]byte
}

// NewChart builds a chart in memory with the Helm SDK types: a ConfigMap
// template reading .Values.replicas, the values and the extra files.
func NewChart(t testing.TB, c ChartSpec) *chart.Chart {
	t.Helper()
	if c.Values == "" {
		c.Values = "replicas: 1\n"
	}
	vals := map[string]any{}
	if err := yaml.Unmarshal([]byte(c.Values), &vals); err != nil {
		t.Fatal(err)
	}
	ch := &chart.Chart{
		Metadata: &chart.Metadata{APIVersion: chart.APIVersionV2, Name: c.Name, Version: c.Version, AppVersion: "1.0", Type: "application"},
		Templates: []*chart.File{{Name: "templates/configmap.yaml",
			Data: []byte("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\ndata:\n  replicas: {{ .Values.replicas | quote }}\n")}},
		Raw:    []*chart.File{{Name: chartutil.ValuesfileName, Data: []byte(c.Values)}},
		Values: vals,
	}
	for p, data := range c.Files {
		ch.Files = append(ch.Files, &chart.File{Name: p, Data: data})
	}
	return ch
}

// Package is the chart packaged with chartutil.Save, as `helm package`
// writes it.
func Package(t testing.TB, c ChartSpec) []byte {
	t.Helper()
	p, err := chartutil.Save(NewChart(t, c), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// Publish packages the chart into the repository with chartutil.Save and
// regenerates index.yaml with repo.IndexDirectory. It returns the
// package's path.
func (s *Server) Publish(c ChartSpec) string {
	s.t.Helper()
	p, err := chartutil.Save(NewChart(s.t, c), s.dir)
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

// IndexBytes is the index.yaml as served.
func (s *Server) IndexBytes() []byte {
	s.t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dir, "index.yaml"))
	if err != nil {
		s.t.Fatal(err)
	}
	return b
}
