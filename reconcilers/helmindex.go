package reconcilers

import (
	"context"
	"path"
	"sync"

	"github.com/fluxcd/pkg/apis/meta"
	"golang.org/x/sync/singleflight"

	helmsrc "github.com/sourceraft/sourceraft/sources/helm"
)

// helmIndexCacheSize bounds the repositories whose index lookups are
// kept. A lean index is a fraction of its index.yaml (names, versions,
// URLs, digests, times), so a few large repositories fit.
const helmIndexCacheSize = 8

// helmIndexCache shares the lookups of HelmRepository index artifacts
// between HelmChart reconciles: the charts of one repository read and
// parse its artifact once per revision, however many reconcile at the
// same time, and the repository's next artifact replaces the entry of
// the previous. Beyond max repositories the least recently used goes.
type helmIndexCache struct {
	max  int
	load func(ctx context.Context, m *meta.Artifact) (*helmsrc.Index, error)

	group singleflight.Group
	mu    sync.Mutex
	// repos is keyed by the artifact's directory: one per repository.
	repos map[string]*helmIndexEntry
	clock uint64
}

type helmIndexEntry struct {
	digest string
	idx    *helmsrc.Index
	used   uint64
}

func newHelmIndexCache(max int, load func(context.Context, *meta.Artifact) (*helmsrc.Index, error)) *helmIndexCache {
	return &helmIndexCache{max: max, load: load, repos: map[string]*helmIndexEntry{}}
}

// get returns the lookups of the index artifact m, loading it unless the
// repository's entry is of m's digest. Concurrent gets of one artifact
// share one load and its error.
func (c *helmIndexCache) get(ctx context.Context, m *meta.Artifact) (*helmsrc.Index, error) {
	repo := path.Dir(m.Path)
	if idx := c.lookup(repo, m.Digest); idx != nil {
		return idx, nil
	}
	v, err, _ := c.group.Do(m.Path+"@"+m.Digest, func() (any, error) {
		if idx := c.lookup(repo, m.Digest); idx != nil {
			return idx, nil
		}
		idx, err := c.load(ctx, m)
		if err != nil {
			return nil, err
		}
		c.put(repo, m.Digest, idx)
		return idx, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*helmsrc.Index), nil
}

func (c *helmIndexCache) lookup(repo, digest string) *helmsrc.Index {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.repos[repo]
	if e == nil || e.digest != digest {
		return nil
	}
	c.clock++
	e.used = c.clock
	return e.idx
}

// put makes idx the repository's entry, replacing one of another digest,
// and evicts the least recently used entries beyond max.
func (c *helmIndexCache) put(repo, digest string, idx *helmsrc.Index) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clock++
	c.repos[repo] = &helmIndexEntry{digest: digest, idx: idx, used: c.clock}
	for len(c.repos) > c.max {
		oldest := ""
		for k, e := range c.repos {
			if oldest == "" || e.used < c.repos[oldest].used {
				oldest = k
			}
		}
		delete(c.repos, oldest)
	}
}
