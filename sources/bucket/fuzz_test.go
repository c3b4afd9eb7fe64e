package bucket

import (
	"path"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzObjectPath: an object key becomes a path only when it stays inside
// the working directory and no two different clean paths collide.
func FuzzObjectPath(f *testing.F) {
	for _, k := range []string{"a/b.yaml", "/lead", "../x", "a/../../x", "a/./b", "a//b", "a\\b", "a\x00b", "..", ".", "", "dir/"} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		p, err := ObjectPath(key)
		if err != nil {
			return
		}
		if !filepath.IsLocal(p) || path.Clean(p) != p || strings.ContainsAny(p, "\\\x00") {
			t.Fatalf("key %q became %q, which is not a clean local path", key, p)
		}
		if p != strings.TrimLeft(key, "/") {
			t.Fatalf("key %q became %q: more than its leading slashes removed", key, p)
		}
	})
}
