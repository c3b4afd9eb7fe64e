package archive

import (
	"archive/tar"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzIgnorePatterns feeds .sourceignore and spec.ignore patterns (one
// in the tree, one as extra) through IgnoreFilter and Write: patterns
// never make Write fail or archive anything outside the tree, and an
// entry is archived only when the filter keeps it.
func FuzzIgnorePatterns(f *testing.F) {
	for _, s := range []struct{ file, extra string }{
		{"*.txt\n", "!keep.txt"}, {"/deep/\n", ""}, {"**/x\n!**/x/y", "#comment\n\\#lit"}, {"[a-\n", "\\"}, {"", "/*\n!/deep"},
		{"deep/**/*.yaml", "   \n\t"}, {"!", "****"},
	} {
		f.Add(s.file, s.extra)
	}
	dir := f.TempDir()
	files := []string{"a.txt", "keep.txt", "deep/x/y", "deep/x/z.yaml", "deep/b.yaml", "#lit", "c d/e f.md"}
	for _, p := range files {
		abs := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(abs), 0o755); err != nil {
			f.Fatal(err)
		}
		if err := os.WriteFile(abs, []byte(p), 0o644); err != nil {
			f.Fatal(err)
		}
	}
	f.Fuzz(func(t *testing.T, file, extra string) {
		if err := os.WriteFile(filepath.Join(dir, ".sourceignore"), []byte(file), 0o644); err != nil {
			t.Fatal(err)
		}
		filter, err := IgnoreFilter(dir, &extra)
		if err != nil {
			return
		}
		pr, pw := io.Pipe()
		go func() {
			_, err := Write(dir, pw, Options{Filter: filter})
			pw.CloseWithError(err)
		}()
		gz, err := gzip.NewReader(pr)
		if err != nil {
			t.Fatalf("patterns %q / %q: %v", file, extra, err)
		}
		tr := tar.NewReader(gz)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("patterns %q / %q: %v", file, extra, err)
			}
			name := strings.TrimSuffix(h.Name, "/")
			if _, err := os.Lstat(filepath.Join(dir, filepath.FromSlash(name))); err != nil || strings.Contains(name, "..") {
				t.Fatalf("archived %q, not in the tree", h.Name)
			}
			if filter(name, h.Typeflag == tar.TypeDir) {
				t.Fatalf("archived %q, which the filter drops", h.Name)
			}
		}
	})
}
