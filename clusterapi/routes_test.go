package clusterapi

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestPathsEscape(t *testing.T) {
	for in, want := range map[string]string{
		NodePath("replica-0"):                    "/v1/nodes/replica-0",
		NodePath("a/b c"):                        "/v1/nodes/a%2Fb%20c",
		ArtifactPath("bucket/ns/app/a.tar.gz"):   "/v1/artifacts/bucket/ns/app/a.tar.gz",
		ArtifactPath("bucket/ns/my app/a?b.tgz"): "/v1/artifacts/bucket/ns/my%20app/a%3Fb.tgz",
	} {
		if in != want {
			t.Errorf("path %q, want %q", in, want)
		}
	}
}

// TestRoutesOnlyHere keeps every internal API path in this package: a Go
// string literal elsewhere in the module (tests included) that names one
// of the routes is a request built by hand. It catches literals, not paths
// glued together from pieces ("/v1" + "/nodes"); import paths and comments
// do not count, nor do other /v1/ paths (a Docker registry's auth key).
func TestRoutesOnlyHere(t *testing.T) {
	routes := []string{ClusterPath, ContentHashPath, strings.TrimSuffix(ArtifactsPrefix, "/"), strings.TrimSuffix(NodesPrefix, "/")}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	here, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	files := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path == here || path != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "bin" || d.Name() == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		files++
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		imports := map[*ast.BasicLit]bool{}
		for _, imp := range f.Imports {
			imports[imp.Path] = true
		}
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING || imports[lit] {
				return true
			}
			s, err := strconv.Unquote(lit.Value)
			if err != nil {
				return true
			}
			for _, r := range routes {
				if strings.Contains(s, r) {
					rel, _ := filepath.Rel(root, path)
					t.Errorf("%s: %s names an internal API route: use clusterapi's paths or Client", rel, lit.Value)
					break
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 100 {
		t.Fatalf("walked %d Go files under %s: not the module", files, root)
	}
}
