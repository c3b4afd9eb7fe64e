package helm

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoadIndex parses hostile index files: an index that loads can be
// written back as Flux stores it, and loading that gives the same bytes.
func FuzzLoadIndex(f *testing.F) {
	f.Add([]byte("apiVersion: v1\nentries:\n  app:\n  - name: app\n    version: 1.0.0\n    urls: [app-1.0.0.tgz]\n"))
	f.Add([]byte("apiVersion: v1\nentries: {}\n"))
	f.Add([]byte("{\"apiVersion\":\"v1\",\"entries\":{\"a\":[{\"name\":\"a\",\"version\":\"not-semver\"}]}}"))
	f.Add([]byte("apiVersion: v1\nentries:\n  a: &x [*x]\n"))
	f.Add([]byte("entries: [1, 2"))
	f.Fuzz(func(t *testing.T, data []byte) {
		file := filepath.Join(t.TempDir(), "index.yaml")
		if err := os.WriteFile(file, data, 0o600); err != nil {
			t.Fatal(err)
		}
		idx, err := LoadIndex(file)
		if err != nil {
			return
		}
		out, err := idx.JSON()
		if err != nil {
			t.Fatalf("loaded index cannot be stored: %v", err)
		}
		if err := os.WriteFile(file, out, 0o600); err != nil {
			t.Fatal(err)
		}
		again, err := LoadIndex(file)
		if err != nil {
			t.Fatalf("the stored form of a loaded index does not load: %v", err)
		}
		if out2, err := again.JSON(); err != nil || string(out2) != string(out) {
			t.Fatalf("stored index changed on reload (%v)", err)
		}
	})
}
