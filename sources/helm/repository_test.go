package helm

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	_ "github.com/opencontainers/go-digest/blake3"
	"github.com/zeebo/blake3"
	"helm.sh/helm/v3/pkg/chart/loader"

	"github.com/sourceraft/sourceraft/internal/helmserver"
)

// fetchIndex downloads and loads the repository's index as a
// HelmRepository reconcile does.
func fetchIndex(t *testing.T, c *Client, max int64, algo digest.Algorithm) (*Index, string, error) {
	t.Helper()
	file, digest, err := c.FetchToFile(t.Context(), c.IndexURL(), t.TempDir(), "index-*.yaml", max, algo)
	if err != nil {
		return nil, "", err
	}
	idx, err := LoadIndex(file)
	return idx, digest, err
}

func newClient(t *testing.T, raw string, o ClientOptions) *Client {
	t.Helper()
	base, err := ParseRepositoryURL(raw)
	if err != nil {
		t.Fatal(err)
	}
	c := NewClient(base, o)
	t.Cleanup(c.Close)
	return c
}

func TestFetchIndexAndBuildFromRepository(t *testing.T) {
	srv := helmserver.Start(t, true)
	srv.Publish(helmserver.ChartSpec{Name: "app", Version: "1.0.0"})
	published := srv.Publish(helmserver.ChartSpec{Name: "app", Version: "1.2.0",
		Files: map[string][]byte{"values-prod.yaml": []byte("replicas: 3\n")}})
	srv.Publish(helmserver.ChartSpec{Name: "app", Version: "2.0.0"})
	creds := ClientOptions{Username: helmserver.User, Password: helmserver.Password}
	c := newClient(t, srv.URL(), creds)

	if _, _, err := fetchIndex(t, c, 10, digest.SHA256); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("index over the limit: error %v, want ErrTooLarge", err)
	}
	idx, sum, err := fetchIndex(t, c, DefaultIndexMaxSize, digest.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if want := sha256.Sum256(srv.IndexBytes()); sum != "sha256:"+hex.EncodeToString(want[:]) {
		t.Errorf("index digest %s, want the sha256 of index.yaml as served", sum)
	}
	// Flux's --artifact-digest-algo: the same bytes in another algorithm.
	if _, sum, err := fetchIndex(t, c, DefaultIndexMaxSize, digest.BLAKE3); err != nil || sum != "blake3:"+hex.EncodeToString(blake3Sum(srv.IndexBytes())) {
		t.Errorf("blake3 index digest %s (%v), want the blake3 of index.yaml as served", sum, err)
	}
	if cv, err := idx.Get("app", ""); err != nil || cv.Version != "2.0.0" {
		t.Errorf("latest app: %+v, %v", cv, err)
	}

	dir := t.TempDir()
	b, err := BuildFromRepository(t.Context(), c, idx, RemoteBuildOptions{
		BuildOptions: BuildOptions{Dir: dir}, Chart: "app", Version: "~1.0 || ~1.2", MaxSize: DefaultChartMaxSize,
	})
	if err != nil {
		t.Fatal(err)
	}
	if b.Version != "1.2.0" || b.Packaged || b.Summary() != "pulled 'app' chart with version '1.2.0'" {
		t.Errorf("build %+v (%s)", b, b.Summary())
	}
	got, err := os.ReadFile(b.Path)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(published)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Error("a chart without values files is not stored as published")
	}

	b, err = BuildFromRepository(t.Context(), c, idx, RemoteBuildOptions{
		BuildOptions: BuildOptions{Dir: dir, ValuesFiles: []string{"values.yaml", "values-prod.yaml"}},
		Chart:        "app", Version: "1.2.0", VersionMetadata: "7", MaxSize: DefaultChartMaxSize,
	})
	if err != nil {
		t.Fatal(err)
	}
	ch, err := loader.Load(b.Path)
	if err != nil {
		t.Fatal(err)
	}
	if b.Version != "1.2.0+7" || !b.Packaged || ch.Metadata.Version != "1.2.0+7" || ch.Values["replicas"] != float64(3) {
		t.Errorf("build %+v, chart %s values %v", b, ch.Metadata.Version, ch.Values)
	}

	upToDate := RemoteBuildOptions{
		BuildOptions: BuildOptions{Dir: dir, UpToDate: func(name, version string) bool { return name == "app" && version == "2.0.0" }},
		Chart:        "app", MaxSize: DefaultChartMaxSize,
	}
	if b, err = BuildFromRepository(t.Context(), c, idx, upToDate); err != nil || !b.UpToDate || b.Path != "" {
		t.Errorf("up-to-date build %+v, %v", b, err)
	}

	var be *BuildError
	for name, o := range map[string]RemoteBuildOptions{
		"no such chart":   {Chart: "nope", MaxSize: DefaultChartMaxSize},
		"no such version": {Chart: "app", Version: ">=3", MaxSize: DefaultChartMaxSize},
		"chart too large": {Chart: "app", MaxSize: 10},
	} {
		o.Dir = dir
		_, err := BuildFromRepository(t.Context(), c, idx, o)
		if !errors.As(err, &be) || be.Reason != ReasonChartPull {
			t.Errorf("%s: error %v, want a ChartPullError", name, err)
		}
	}
	anonymous := newClient(t, srv.URL(), ClientOptions{})
	if _, err := BuildFromRepository(t.Context(), anonymous, idx, RemoteBuildOptions{BuildOptions: BuildOptions{Dir: dir}, Chart: "app", MaxSize: DefaultChartMaxSize}); !errors.As(err, &be) || !strings.Contains(err.Error(), "401") {
		t.Errorf("anonymous chart download: error %v, want the server's 401", err)
	}
	if _, _, err := fetchIndex(t, anonymous, DefaultIndexMaxSize, digest.SHA256); err == nil {
		t.Error("anonymous index fetch succeeded")
	}
}

func TestBuildFromDirectory(t *testing.T) {
	src := t.TempDir()
	if err := saveDir(helmserver.NewChart(t, helmserver.ChartSpec{Name: "app", Version: "0.1.0",
		Files: map[string][]byte{"values-prod.yaml": []byte("replicas: 5\n")}}), filepath.Join(src, "charts")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "extra.yaml"), []byte("replicas: 9\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	b, err := BuildFromDirectory(t.Context(), src, LocalBuildOptions{
		BuildOptions: BuildOptions{Dir: dir, ValuesFiles: []string{"extra.yaml"}},
		Chart:        "./charts/app", SourceKind: "GitRepository", VersionMetadata: ShortRevision("main@sha1:0123456789abcdef0123456789abcdef01234567"),
	})
	if err != nil {
		t.Fatal(err)
	}
	ch, err := loader.Load(b.Path)
	if err != nil {
		t.Fatal(err)
	}
	if b.Version != "0.1.0+0123456789ab" || !b.Packaged || ch.Values["replicas"] != float64(9) {
		t.Errorf("build %+v, values %v", b, ch.Values)
	}

	var be *BuildError
	for name, tt := range map[string]struct {
		o      LocalBuildOptions
		reason BuildErrorReason
	}{
		"outside the source":   {LocalBuildOptions{Chart: "../app"}, ReasonChartReference},
		"missing chart":        {LocalBuildOptions{Chart: "charts/nope"}, ReasonChartReference},
		"missing values file":  {LocalBuildOptions{Chart: "charts/app", BuildOptions: BuildOptions{ValuesFiles: []string{"nope.yaml"}}}, ReasonValuesFiles},
		"bad version metadata": {LocalBuildOptions{Chart: "charts/app", VersionMetadata: "bad_meta"}, ReasonMetadataPatch},
	} {
		tt.o.Dir = dir
		if _, err := BuildFromDirectory(t.Context(), src, tt.o); !errors.As(err, &be) || be.Reason != tt.reason {
			t.Errorf("%s: error %v, want reason %s", name, err, tt.reason)
		}
	}
}

func blake3Sum(b []byte) []byte {
	sum := blake3.Sum256(b)
	return sum[:]
}
