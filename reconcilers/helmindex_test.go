package reconcilers

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"

	helmsrc "github.com/sourceraft/sourceraft/sources/helm"
)

// countingIndexLoad loads real index files, one per digest (the file's
// name), counting the loads, each held until release is closed.
type countingIndexLoad struct {
	dir     string
	loads   atomic.Int32
	release chan struct{}
}

func (l *countingIndexLoad) load(_ context.Context, m *meta.Artifact) (*helmsrc.Index, error) {
	l.loads.Add(1)
	<-l.release
	return helmsrc.LoadIndex(filepath.Join(l.dir, m.Digest))
}

func newCountingIndexLoad(t *testing.T, versions map[string]string) *countingIndexLoad {
	t.Helper()
	l := &countingIndexLoad{dir: t.TempDir(), release: make(chan struct{})}
	for digest, v := range versions {
		index := "apiVersion: v1\nentries:\n  app:\n  - name: app\n    version: " + v + "\n    urls: [app-" + v + ".tgz]\n"
		if err := os.WriteFile(filepath.Join(l.dir, digest), []byte(index), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

func indexArtifact(repo, digest string) *meta.Artifact {
	return &meta.Artifact{Path: "helmrepository/ns/" + repo + "/index-" + digest + ".yaml", Digest: digest}
}

// TestHelmIndexCacheLoadsOncePerRevision: concurrent charts of one
// repository parse its artifact once; a new artifact of the repository
// replaces the old, which must then be parsed again.
func TestHelmIndexCacheLoadsOncePerRevision(t *testing.T) {
	l := newCountingIndexLoad(t, map[string]string{"sha256:1": "1.0.0", "sha256:2": "2.0.0"})
	c := newHelmIndexCache(2, l.load)

	const charts = 8
	var wg sync.WaitGroup
	versions := make([]string, charts)
	errs := make([]error, charts)
	for i := range charts {
		wg.Go(func() {
			idx, err := c.get(t.Context(), indexArtifact("repo", "sha256:1"))
			if err == nil {
				var cv *helmsrc.ChartVersion
				if cv, err = idx.Get("app", ""); err == nil {
					versions[i] = cv.Version
				}
			}
			errs[i] = err
		})
	}
	// Every get is waiting on the first load by now.
	time.Sleep(200 * time.Millisecond)
	close(l.release)
	wg.Wait()
	for i := range charts {
		if errs[i] != nil || versions[i] != "1.0.0" {
			t.Fatalf("chart %d: %q, %v", i, versions[i], errs[i])
		}
	}
	if n := l.loads.Load(); n != 1 {
		t.Fatalf("%d concurrent gets loaded the index %d times, want once", charts, n)
	}

	if _, err := c.get(t.Context(), indexArtifact("repo", "sha256:1")); err != nil || l.loads.Load() != 1 {
		t.Fatalf("a later get of the same revision loaded again (%d loads, %v)", l.loads.Load(), err)
	}
	idx, err := c.get(t.Context(), indexArtifact("repo", "sha256:2"))
	if err != nil || l.loads.Load() != 2 {
		t.Fatalf("new revision: %d loads, %v", l.loads.Load(), err)
	}
	if cv, err := idx.Get("app", ""); err != nil || cv.Version != "2.0.0" {
		t.Fatalf("new revision's lookups: %+v, %v", cv, err)
	}
	if _, err := c.get(t.Context(), indexArtifact("repo", "sha256:1")); err != nil || l.loads.Load() != 3 {
		t.Fatalf("the replaced revision was kept: %d loads, %v", l.loads.Load(), err)
	}
	if len(c.repos) != 1 {
		t.Fatalf("one repository holds %d entries", len(c.repos))
	}
}

// TestHelmIndexCacheBound evicts the least recently used repository.
func TestHelmIndexCacheBound(t *testing.T) {
	l := newCountingIndexLoad(t, map[string]string{"sha256:1": "1.0.0"})
	close(l.release)
	c := newHelmIndexCache(2, l.load)
	for _, repo := range []string{"a", "b", "a", "c", "a", "b"} {
		if _, err := c.get(t.Context(), indexArtifact(repo, "sha256:1")); err != nil {
			t.Fatal(err)
		}
	}
	// a, b loaded; a hit; c evicts b; a hit; b evicts c.
	if n := l.loads.Load(); n != 4 || len(c.repos) != 2 {
		t.Fatalf("%d loads, %d entries; want 4 loads and 2 entries", n, len(c.repos))
	}
	if c.repos["helmrepository/ns/a"] == nil || c.repos["helmrepository/ns/b"] == nil {
		t.Fatalf("kept %v, want a and b", c.repos)
	}
}
