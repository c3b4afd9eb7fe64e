package helm

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
)

func TestVersionWithMetadata(t *testing.T) {
	for _, tc := range []struct {
		version, metadata, want string
		reason                  BuildErrorReason
	}{
		{"1.0.0", "", "1.0.0", ""},
		{"1.0.0", "abc123def456", "1.0.0+abc123def456", ""},
		{"1.0.0+old", "3", "1.0.0+3", ""},
		{"1.0.0-rc.1", "abc.2", "1.0.0-rc.1+abc.2", ""},
		{"not-semver", "1", "", ReasonMetadataPatch},
		{"1.0.0", "bad_meta", "", ReasonMetadataPatch},
	} {
		got, err := versionWithMetadata(tc.version, tc.metadata)
		var be *BuildError
		switch {
		case tc.reason != "" && (!errors.As(err, &be) || be.Reason != tc.reason):
			t.Errorf("%s + %s: error %v, want reason %s", tc.version, tc.metadata, err, tc.reason)
		case tc.reason == "" && (err != nil || got != tc.want):
			t.Errorf("%s + %s = %q, %v; want %q", tc.version, tc.metadata, got, err, tc.want)
		}
	}
}

func TestShortRevision(t *testing.T) {
	for in, want := range map[string]string{
		"main@sha1:0123456789abcdef0123456789abcdef01234567": "0123456789ab",
		"sha256:fedcba9876543210fedcba9876543210":            "fedcba987654",
		"short": "short",
	} {
		if got := ShortRevision(in); got != want {
			t.Errorf("ShortRevision(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseRepositoryURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://charts.example.com":         "https://charts.example.com/",
		"https://charts.example.com/stable/": "https://charts.example.com/stable/",
		"http://127.0.0.1:8080/a/b":          "http://127.0.0.1:8080/a/b/",
	} {
		u, err := ParseRepositoryURL(in)
		if err != nil || u.String() != want {
			t.Errorf("ParseRepositoryURL(%q) = %v, %v; want %s", in, u, err, want)
		}
	}
	for _, in := range []string{"oci://registry.example.com/charts", "http:///path", "ftp://example.com", "http://[::1"} {
		if _, err := ParseRepositoryURL(in); !errors.Is(err, ErrInvalidURL) {
			t.Errorf("ParseRepositoryURL(%q): %v, want ErrInvalidURL", in, err)
		}
	}
}

func TestMergeValues(t *testing.T) {
	files := map[string]string{
		"values.yaml": "a: 1\nnested:\n  x: 1\n  z: 1\nlist: [1, 2]\n",
		"prod.yaml":   "nested:\n  z: 2\nlist: [3]\nb: true\n",
		"bad.yaml":    "a: [unclosed\n",
	}
	read := func(p string) ([]byte, error) {
		if s, ok := files[p]; ok {
			return []byte(s), nil
		}
		return nil, fs.ErrNotExist
	}
	got, used, err := mergeValues([]string{"values.yaml", "prod.yaml"}, false, read)
	want := map[string]any{"a": float64(1), "b": true, "list": []any{float64(3)}, "nested": map[string]any{"x": float64(1), "z": float64(2)}}
	if err != nil || !reflect.DeepEqual(got, want) || !reflect.DeepEqual(used, []string{"values.yaml", "prod.yaml"}) {
		t.Fatalf("merge = %v %v %v; want %v", got, used, err, want)
	}
	if _, _, err := mergeValues([]string{"values.yaml", "absent.yaml"}, false, read); err == nil {
		t.Fatal("missing file accepted")
	}
	_, used, err = mergeValues([]string{"absent.yaml", "prod.yaml"}, true, read)
	if err != nil || !reflect.DeepEqual(used, []string{"prod.yaml"}) {
		t.Fatalf("ignoreMissing: %v %v", used, err)
	}
	if _, _, err := mergeValues([]string{"bad.yaml"}, true, read); err == nil {
		t.Fatal("invalid YAML accepted")
	}
}

func TestRootReaderStaysInside(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "v.yaml"), []byte("a: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(filepath.Dir(dir), "outside-values.yaml")
	if err := os.WriteFile(outside, []byte("secret: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(outside)
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	read := rootReader(root)
	if b, err := read("./v.yaml"); err != nil || string(b) != "a: 1\n" {
		t.Fatalf("read v.yaml: %q %v", b, err)
	}
	if _, err := read("../outside-values.yaml"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("read outside the root: %v", err)
	}
}

func testChart(name, version string) *chart.Chart {
	return &chart.Chart{
		Metadata:  &chart.Metadata{APIVersion: chart.APIVersionV2, Name: name, Version: version},
		Templates: []*chart.File{{Name: "templates/cm.yaml", Data: []byte("kind: ConfigMap\n")}},
		Raw:       []*chart.File{{Name: chartutil.ValuesfileName, Data: []byte("a: 1\n")}},
		Values:    map[string]any{"a": float64(1)},
		Files:     []*chart.File{{Name: "README.md", Data: []byte("readme\n")}},
	}
}

// TestPackageDeterministic packages the same chart twice into the
// same bytes, loadable by Helm with its subchart.
func TestPackageDeterministic(t *testing.T) {
	build := func() []byte {
		ch := testChart("parent", "1.0.0+abc")
		ch.AddDependency(testChart("child", "0.1.0"))
		if err := setValues(ch, map[string]any{"a": float64(2)}); err != nil {
			t.Fatal(err)
		}
		p, err := packageChart(ch, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Base(p) != "parent-1.0.0+abc.tgz" {
			t.Fatalf("package name %s", filepath.Base(p))
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	a, b := build(), build()
	if !bytes.Equal(a, b) {
		t.Fatal("packaging the same chart twice gave different bytes")
	}
	ch, err := loader.LoadArchive(bytes.NewReader(a))
	if err != nil {
		t.Fatal(err)
	}
	if ch.Metadata.Version != "1.0.0+abc" || ch.Values["a"] != float64(2) || len(ch.Dependencies()) != 1 ||
		ch.Dependencies()[0].Name() != "child" || len(ch.Files) != 1 {
		t.Fatalf("loaded %s values %v deps %d files %d", ch.Metadata.Version, ch.Values, len(ch.Dependencies()), len(ch.Files))
	}
}
