package reconcilers

import (
	"os/exec"
	"strings"
	"testing"
)

// goListImports is the direct imports of each package pattern matches,
// package → imports, as `go list` reports them (tests excluded).
func goListImports(t *testing.T, pattern string) map[string][]string {
	t.Helper()
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, pattern).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("go list %s: %v\n%s", pattern, err, ee.Stderr)
		}
		t.Fatalf("go list %s: %v", pattern, err)
	}
	pkgs := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkgs[fields[0]] = fields[1:]
	}
	return pkgs
}

// offending returns the imports that start with one of prefixes.
func offending(imports, prefixes []string) []string {
	var bad []string
	for _, imp := range imports {
		for _, p := range prefixes {
			if strings.HasPrefix(imp, p) {
				bad = append(bad, imp)
			}
		}
	}
	return bad
}

// TestProtocolClientsStayInSources keeps the layout of DESIGN.md: the
// reconcilers speak no Git, Helm, OCI or S3 protocol themselves (that is
// sources/*), and the protocol clients know nothing of Kubernetes, Flux's
// conditions or the reconcilers.
func TestProtocolClientsStayInSources(t *testing.T) {
	protocols := []string{
		"github.com/go-git/",
		"helm.sh/helm/",
		"github.com/google/go-containerregistry/",
		"github.com/minio/minio-go/",
	}
	rec := goListImports(t, "github.com/sourceraft/sourceraft/reconcilers")
	if len(rec) != 1 {
		t.Fatalf("go list found %d reconcilers packages", len(rec))
	}
	for pkg, imports := range rec {
		if bad := offending(imports, protocols); len(bad) > 0 {
			t.Errorf("%s imports protocol clients %v: move that code to sources/*", pkg, bad)
		}
	}

	kubernetes := []string{
		"k8s.io/",
		"sigs.k8s.io/controller-runtime",
		"github.com/fluxcd/pkg/runtime/conditions",
		"github.com/fluxcd/pkg/runtime/events",
		"github.com/fluxcd/pkg/runtime/patch",
		"github.com/fluxcd/pkg/apis/",
		"github.com/fluxcd/source-controller/api",
		"github.com/sourceraft/sourceraft/reconcilers",
		"github.com/sourceraft/sourceraft/storage",
	}
	sources := goListImports(t, "github.com/sourceraft/sourceraft/sources/...")
	for _, want := range []string{"git", "helm", "oci", "bucket"} {
		if _, ok := sources["github.com/sourceraft/sourceraft/sources/"+want]; !ok {
			t.Errorf("go list found no package sources/%s", want)
		}
	}
	for pkg, imports := range sources {
		if bad := offending(imports, kubernetes); len(bad) > 0 {
			t.Errorf("%s imports %v: protocol clients take plain options, not Kubernetes or Flux API types", pkg, bad)
		}
	}
}
