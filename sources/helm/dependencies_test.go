package helm

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"

	"github.com/sourceraft/sourceraft/internal/helmserver"
)

// depSource writes a source tree with the chart app at charts/app
// declaring deps (and lock, when set) and the chart lib 0.2.0 at
// charts/lib, and returns the tree.
func depSource(t *testing.T, deps []*chart.Dependency, lock *chart.Lock) string {
	t.Helper()
	src := t.TempDir()
	if err := chartutil.SaveDir(testChart("lib", "0.2.0"), filepath.Join(src, "charts")); err != nil {
		t.Fatal(err)
	}
	app := testChart("app", "1.0.0")
	app.Metadata.Dependencies = deps
	app.Lock = lock
	if err := saveDir(app, filepath.Join(src, "charts")); err != nil {
		t.Fatal(err)
	}
	return src
}

// buildDeps builds charts/app of src with the HTTP(S) fetcher of open
// and an anonymous OCI fetcher.
func buildDeps(t *testing.T, src string, open RepositoryOpener, limits Limits) (*Build, error) {
	t.Helper()
	f := NewHTTPFetcher(open, limits)
	defer f.Close()
	o := NewOCIFetcher(nil, limits)
	defer o.Close()
	return buildWith(t, src, Dependencies{"http": f, "https": f, "oci": o})
}

// buildWith builds charts/app of src with deps.
func buildWith(t *testing.T, src string, deps Dependencies) (*Build, error) {
	t.Helper()
	return BuildFromDirectory(t.Context(), src, LocalBuildOptions{
		BuildOptions: BuildOptions{Dir: t.TempDir()},
		Chart:        "charts/app", SourceKind: "GitRepository",
		Dependencies: deps,
	})
}

// credentialsFor opens the repository at authURL with the test
// server's credentials, any other anonymously.
func credentialsFor(authURL string) RepositoryOpener {
	return func(_ context.Context, base *url.URL) (*Client, *Index, error) {
		o := ClientOptions{}
		if strings.TrimSuffix(base.String(), "/") == authURL {
			o.Username, o.Password = helmserver.User, helmserver.Password
		}
		return NewClient(base, o), nil, nil
	}
}

func subchartVersions(t *testing.T, path string) map[string]string {
	t.Helper()
	ch, err := loader.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, d := range ch.Dependencies() {
		got[d.Name()] = d.Metadata.Version
	}
	return got
}

// TestRemoteDependencies resolves a chart directory's dependencies from
// real Helm repositories on loopback: a SemVer range to its newest
// stable match, an aliased chart from a repository that needs basic
// auth, a file:// chart, and a version locked by Chart.lock; the same
// inputs package into the same bytes.
func TestRemoteDependencies(t *testing.T) {
	public := helmserver.Start(t, false)
	for _, v := range []string{"1.0.0", "1.2.0", "1.3.0-rc.1", "2.0.0"} {
		public.Publish(helmserver.ChartSpec{Name: "redis", Version: v})
	}
	private := helmserver.Start(t, true)
	private.Publish(helmserver.ChartSpec{Name: "common", Version: "0.5.0"})

	src := depSource(t, []*chart.Dependency{
		{Name: "redis", Version: "^1.0.0", Repository: public.URL()},
		{Name: "common", Version: "0.5.x", Repository: private.URL() + "/", Alias: "base"},
		{Name: "lib", Version: ">=0.1.0", Repository: "file://../lib"},
	}, nil)
	b, err := buildDeps(t, src, credentialsFor(private.URL()), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"redis": "1.2.0", "base": "0.5.0", "lib": "0.2.0"}
	if got := subchartVersions(t, b.Path); len(got) != len(want) || got["redis"] != "1.2.0" || got["base"] != "0.5.0" || got["lib"] != "0.2.0" {
		t.Fatalf("subcharts %v, want %v", got, want)
	}
	first, err := os.ReadFile(b.Path)
	if err != nil {
		t.Fatal(err)
	}
	b2, err := buildDeps(t, src, credentialsFor(private.URL()), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	second, err := os.ReadFile(b2.Path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first, second) {
		t.Fatal("the same chart and dependencies packaged into different bytes")
	}

	// A newer match is picked up by the next build.
	public.Publish(helmserver.ChartSpec{Name: "redis", Version: "1.4.0"})
	b3, err := buildDeps(t, src, credentialsFor(private.URL()), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if got := subchartVersions(t, b3.Path)["redis"]; got != "1.4.0" {
		t.Fatalf("redis %s after 1.4.0 was published", got)
	}

	// Chart.lock pins the version.
	locked := depSource(t, []*chart.Dependency{{Name: "redis", Version: "^1.0.0", Repository: public.URL()}},
		&chart.Lock{Dependencies: []*chart.Dependency{{Name: "redis", Version: "1.0.0", Repository: public.URL()}}})
	b4, err := buildDeps(t, locked, nil, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if got := subchartVersions(t, b4.Path)["redis"]; got != "1.0.0" {
		t.Fatalf("locked redis resolved to %s, want 1.0.0", got)
	}
}

// TestRemoteDependencyFailures: every bad dependency fails the build as
// a DependencyBuildError saying what was wrong.
func TestRemoteDependencyFailures(t *testing.T) {
	public := helmserver.Start(t, false)
	public.Publish(helmserver.ChartSpec{Name: "redis", Version: "1.0.0"})
	private := helmserver.Start(t, true)
	private.Publish(helmserver.ChartSpec{Name: "common", Version: "0.5.0"})

	serve := func(status int, body string) string {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(status)
			w.Write([]byte(body))
		}))
		t.Cleanup(s.Close)
		return s.URL
	}
	// An index whose chart packages are gone.
	index := bytes.ReplaceAll(public.IndexBytes(), []byte(public.URL()), []byte("http://127.0.0.1:1"))
	noCharts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/index.yaml" {
			http.NotFound(w, r)
			return
		}
		w.Write(bytes.ReplaceAll(index, []byte("http://127.0.0.1:1"), []byte("http://"+r.Host)))
	}))
	t.Cleanup(noCharts.Close)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String()
	l.Close()

	dep := func(name, version, repo string) []*chart.Dependency {
		return []*chart.Dependency{{Name: name, Version: version, Repository: repo}}
	}
	for name, tt := range map[string]struct {
		deps   []*chart.Dependency
		limits Limits
		want   string
	}{
		"index 404":            {dep("redis", "1.0.0", public.URL()+"/nope"), Limits{}, "404"},
		"index 500":            {dep("redis", "1.0.0", serve(http.StatusInternalServerError, "boom")), Limits{}, "500"},
		"index garbage":        {dep("redis", "1.0.0", serve(http.StatusOK, "{{{ not yaml")), Limits{}, "failed to load repository index"},
		"index not an index":   {dep("redis", "1.0.0", serve(http.StatusOK, "hello: world\n")), Limits{}, "failed to load repository index"},
		"index too large":      {dep("redis", "1.0.0", public.URL()), Limits{IndexMaxSize: 64}, "exceeds the maximum size"},
		"unreachable":          {dep("redis", "1.0.0", closed), Limits{}, "connection refused"},
		"no matching version":  {dep("redis", ">=5.0.0", public.URL()), Limits{}, "no 'redis' chart with version matching '>=5.0.0' found"},
		"no such chart":        {dep("nosuch", "1.0.0", public.URL()), Limits{}, "no chart name 'nosuch' found"},
		"chart gone":           {dep("redis", "1.0.0", noCharts.URL), Limits{}, "404"},
		"chart too large":      {dep("redis", "1.0.0", public.URL()), Limits{ChartMaxSize: 100}, "exceeds the maximum size"},
		"no credentials":       {dep("common", "0.5.0", private.URL()), Limits{}, "401"},
		"oci unreachable":      {dep("redis", "1.0.0", "oci://"+closed[len("http://"):]+"/charts"), Limits{}, "connection refused"},
		"repository alias @":   {dep("redis", "1.0.0", "@stable"), Limits{}, "aliased repository dependency is not supported"},
		"repository alias:":    {dep("redis", "1.0.0", "alias:stable"), Limits{}, "aliased repository dependency is not supported"},
		"unsupported scheme":   {dep("redis", "1.0.0", "ftp://127.0.0.1/charts"), Limits{}, "invalid dependency repository URL"},
		"local cycle":          {dep("app", "", "file://."), Limits{}, "dependency cycle"},
		"local outside":        {dep("lib", "", "file://../../../etc"), Limits{}, "outside the source"},
		"local missing":        {dep("nope", "", "file://../nope"), Limits{}, "no chart found at '../nope'"},
		"local version":        {dep("lib", "^1.0.0", "file://../lib"), Limits{}, "can't get a valid version for constraint '^1.0.0'"},
		"not vendored":         {dep("nope", "", ""), Limits{}, "no chart found at 'charts/nope'"},
		"invalid constraint":   {dep("lib", "not a range", "file://../lib"), Limits{}, "invalid version/constraint format"},
		"invalid remote range": {dep("redis", "not a range", public.URL()), Limits{}, "improper constraint"},
	} {
		t.Run(name, func(t *testing.T) {
			src := depSource(t, tt.deps, nil)
			_, err := buildDeps(t, src, nil, tt.limits)
			var be *BuildError
			if !errors.As(err, &be) || be.Reason != ReasonDependencyBuild || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want a %s with %q", err, ReasonDependencyBuild, tt.want)
			}
		})
	}
}

// TestVendoredDependencies: a dependency already under charts/ is not
// fetched, under its alias too.
func TestVendoredDependencies(t *testing.T) {
	src := depSource(t, []*chart.Dependency{
		{Name: "lib", Version: "0.2.0", Repository: "http://127.0.0.1:1/unreachable", Alias: "vendored"},
	}, nil)
	vendored := testChart("vendored", "0.2.0")
	if err := chartutil.SaveDir(vendored, filepath.Join(src, "charts", "app", "charts")); err != nil {
		t.Fatal(err)
	}
	b, err := buildDeps(t, src, nil, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if got := subchartVersions(t, b.Path); len(got) != 1 || got["vendored"] != "0.2.0" {
		t.Fatalf("subcharts %v", got)
	}
}
