package storage

import (
	"path"
	"strings"
	"testing"
)

// FuzzParsePath: whatever ParsePath accepts is exactly four clean
// segments naming nothing outside the store, and ParseWritePath accepts
// only what ParsePath does, with a Flux kind and Kubernetes names.
func FuzzParsePath(f *testing.F) {
	for _, s := range []string{
		"gitrepository/flux-system/podinfo/abc.tar.gz", "/bucket/default/b/x.tar.gz", "a/../b/c/d", "a/b/c/d/",
		"helmchart/ns/podinfo.v6/podinfo-6.5.0+build.1.tgz", "GitRepository/default/app/a.tar.gz", "a/b/c/..", "a\\b/c/d/e",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		a, err := ParsePath(p)
		wa, werr := ParseWritePath(p)
		if err != nil {
			if werr == nil {
				t.Fatalf("ParseWritePath accepted %q that ParsePath refused: %v", p, err)
			}
			return
		}
		clean := strings.TrimPrefix(p, "/")
		if a.Path() != clean || path.Clean("/"+clean) != "/"+clean {
			t.Fatalf("%q parsed as %q", p, a.Path())
		}
		for _, s := range strings.Split(a.Path(), "/") {
			if s == "" || s == "." || s == ".." || strings.ContainsAny(s, "\\\x00") {
				t.Fatalf("%q: segment %q accepted", p, s)
			}
		}
		if werr != nil {
			return
		}
		if wa.Path() != a.Path() || a.ValidateNew() != nil {
			t.Fatalf("%q: write parse %+v differs from %+v", p, wa, a)
		}
		if strings.ToLower(a.Kind) != a.Kind || strings.ToLower(a.Namespace) != a.Namespace || strings.ToLower(a.Name) != a.Name {
			t.Fatalf("%q: upper case accepted for a write", p)
		}
	})
}
