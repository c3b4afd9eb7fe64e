package helm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sourceraft/sourceraft/internal/ociregistry"
	"helm.sh/helm/v3/pkg/chart/loader"
)

// FuzzChartArchive builds hostile chart packages found in a source, as a
// HelmChart with values files and a revision does: a package that builds
// is repackaged inside the output directory, loads again under the name
// and version the build reported, and carries the merged values.
func FuzzChartArchive(f *testing.F) {
	good := packagedChart(f)
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add(ociregistry.TarGz(f, map[string]string{"app/Chart.yaml": "apiVersion: v2\nname: app\nversion: 1.0.0\n", "app/../../escape": "x"}))
	f.Add(ociregistry.TarGz(f, map[string]string{"app/Chart.yaml": "apiVersion: v2\nname: ../app\nversion: 1.0.0\n"}))
	f.Add(ociregistry.TarGz(f, map[string]string{"app/Chart.yaml": "apiVersion: v2\nname: app\nversion: 1.0.0\n",
		"app/charts/sub.tgz": string(good), "app/values.yaml": "a: &x [*x, *x]\n"}))
	f.Fuzz(func(t *testing.T, data []byte) {
		src, out := t.TempDir(), t.TempDir()
		if err := os.WriteFile(filepath.Join(src, "chart.tgz"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, "override.yaml"), []byte("fuzzed: marker\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		b, err := BuildFromDirectory(t.Context(), src, LocalBuildOptions{
			BuildOptions:    BuildOptions{ValuesFiles: []string{"override.yaml"}, Dir: out},
			Chart:           "chart.tgz",
			SourceKind:      "GitRepository",
			VersionMetadata: "abc123",
		})
		if err != nil {
			return
		}
		if rel, rerr := filepath.Rel(out, b.Path); rerr != nil || !filepath.IsLocal(rel) {
			t.Fatalf("package written outside the output directory: %s", b.Path)
		}
		ch, err := loader.Load(b.Path)
		if err != nil {
			t.Fatalf("the built package does not load: %v", err)
		}
		if ch.Name() != b.Name || ch.Metadata.Version != b.Version || !strings.HasSuffix(b.Version, "+abc123") {
			t.Fatalf("built %s %s, package says %s %s", b.Name, b.Version, ch.Name(), ch.Metadata.Version)
		}
		if ch.Values["fuzzed"] != "marker" {
			t.Fatalf("values file not merged: %v", ch.Values)
		}
	})
}

func packagedChart(tb testing.TB) []byte {
	ch := testChart("app", "1.0.0")
	ch.AddDependency(testChart("child", "0.1.0"))
	p, err := packageChart(ch, tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
