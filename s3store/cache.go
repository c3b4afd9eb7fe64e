package s3store

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/minio/minio-go/v7"

	"github.com/sourceraft/sourceraft/metrics"
	"github.com/sourceraft/sourceraft/storage"
)

// cache holds verified copies of objects on local disk, named by their
// hex digest, least recently used evicted first. A file is renamed in only
// after its bytes hashed to its name, so one found at start is good; an
// evicted file is unlinked, and downloads that have it open read on.
type cache struct {
	dir   string
	limit int64

	mu      sync.Mutex
	entries map[string]*list.Element // hex → element of lru holding *cacheEntry
	lru     *list.List               // front: most recently used
	bytes   int64
	loading map[string]*load

	hits, misses int64
}

type cacheEntry struct {
	hex  string
	size int64
}

// load is one download in flight; others wanting the same blob wait on it.
type load struct {
	done chan struct{}
	err  error
}

// tmpPrefix names downloads in progress; openCache removes leftovers.
const tmpPrefix = "tmp-"

func openCache(dir string, limit int64) (*cache, error) {
	if dir == "" {
		return nil, errors.New("an S3 cache directory is required")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("S3 cache: %w", err)
	}
	c := &cache{dir: dir, limit: limit, entries: map[string]*list.Element{}, lru: list.New(), loading: map[string]*load{}}
	files, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("S3 cache: %w", err)
	}
	type found struct {
		entry cacheEntry
		used  int64
	}
	var kept []found
	for _, f := range files {
		info, err := f.Info()
		if err != nil || !info.Mode().IsRegular() || !isDigestHex(f.Name()) {
			_ = os.Remove(filepath.Join(dir, f.Name()))
			continue
		}
		kept = append(kept, found{cacheEntry{f.Name(), info.Size()}, info.ModTime().UnixNano()})
	}
	// Oldest first to the back: the last modified is the last used.
	sort.Slice(kept, func(i, j int) bool { return kept[i].used > kept[j].used })
	for _, k := range kept {
		e := k.entry
		c.entries[e.hex] = c.lru.PushBack(&e)
		c.bytes += e.size
	}
	c.mu.Lock()
	c.evictLocked()
	c.mu.Unlock()
	metrics.S3CacheBytes.Set(float64(c.bytes))
	return c, nil
}

func (c *cache) path(hexDigest string) string { return filepath.Join(c.dir, hexDigest) }

// CacheStats counts the read cache's work since the process started.
type CacheStats struct {
	Hits, Misses, Bytes int64
	Entries             int
}

// CacheStats returns the read cache's counters.
func (s *Store) CacheStats() CacheStats {
	c := s.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	return CacheStats{Hits: c.hits, Misses: c.misses, Bytes: c.bytes, Entries: len(c.entries)}
}

// Open returns a file holding exactly digest's verified bytes, at offset
// 0; the caller closes it. A cache hit opens the cached file; a miss
// downloads the object once however many ask, verifies it and caches it.
// A blob larger than the whole cache is downloaded to a file unlinked at
// once, served to this caller only.
func (s *Store) Open(ctx context.Context, digest string, size int64) (*os.File, error) {
	hexDigest, ok := strings.CutPrefix(digest, "sha256:")
	if !ok || !isDigestHex(hexDigest) {
		return nil, fmt.Errorf("open %q: not a sha256 digest", digest)
	}
	c := s.cache
	if size > c.limit {
		c.count(false)
		return s.download(ctx, digest, size, true)
	}
	for attempt := 0; ; attempt++ {
		if fh, ok := c.hit(hexDigest); ok {
			return fh, nil
		}
		c.mu.Lock()
		l, waiting := c.loading[hexDigest]
		if !waiting {
			l = &load{done: make(chan struct{})}
			c.loading[hexDigest] = l
		}
		c.mu.Unlock()
		if waiting {
			select {
			case <-l.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if l.err != nil {
				return nil, l.err
			}
			if attempt < 3 {
				continue // cached now (unless evicted at once: try again)
			}
		}
		c.count(false)
		fh, err := s.download(ctx, digest, size, false)
		if !waiting {
			c.mu.Lock()
			delete(c.loading, hexDigest)
			c.mu.Unlock()
			l.err = err
			close(l.done)
		}
		return fh, err
	}
}

// hit opens a cached copy and marks it used.
func (c *cache) hit(hexDigest string) (*os.File, bool) {
	c.mu.Lock()
	el, ok := c.entries[hexDigest]
	if ok {
		c.lru.MoveToFront(el)
	}
	c.mu.Unlock()
	if !ok {
		return nil, false
	}
	fh, err := os.Open(c.path(hexDigest))
	if err != nil {
		c.remove(hexDigest) // gone from under us: fetch again
		return nil, false
	}
	c.count(true)
	return fh, true
}

func (c *cache) count(hit bool) {
	c.mu.Lock()
	if hit {
		c.hits++
	} else {
		c.misses++
	}
	c.mu.Unlock()
	result := "miss"
	if hit {
		result = "hit"
	}
	metrics.S3CacheRequests.WithLabelValues(result).Inc()
}

// download fetches the object into a temporary file while hashing it and
// checks its size and digest; then it either unlinks the file (once) or
// renames it into the cache.
func (s *Store) download(ctx context.Context, digest string, size int64, once bool) (*os.File, error) {
	c := s.cache
	hexDigest := strings.TrimPrefix(digest, "sha256:")
	obj, err := s.client.GetObject(ctx, s.cfg.Bucket, s.Key(digest), minio.GetObjectOptions{})
	if err != nil {
		return nil, s.describe(err, "get "+digest)
	}
	defer obj.Close()
	tmp, err := os.CreateTemp(c.dir, tmpPrefix)
	if err != nil {
		return nil, fmt.Errorf("S3 cache: %w", err)
	}
	keep := false
	defer func() {
		if !keep {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	w := &fileWriter{f: tmp}
	n, err := io.Copy(io.MultiWriter(w, h), io.LimitReader(obj, size+1))
	if w.err != nil {
		return nil, fmt.Errorf("S3 cache: %w", w.err)
	}
	if err != nil {
		return nil, s.describe(err, "get "+digest)
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != size || got != hexDigest {
		return nil, fmt.Errorf("object %s of bucket %s has %d bytes hashing to sha256:%s, want %d bytes: %w",
			s.Key(digest), s.cfg.Bucket, n, got, size, storage.ErrCorrupt)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	if once {
		if err := os.Remove(tmp.Name()); err != nil {
			return nil, fmt.Errorf("S3 cache: %w", err)
		}
		keep = true
		return tmp, nil
	}
	if err := os.Rename(tmp.Name(), c.path(hexDigest)); err != nil {
		return nil, fmt.Errorf("S3 cache: %w", err)
	}
	keep = true
	c.add(hexDigest, size)
	return tmp, nil
}

// fileWriter remembers a failed write (disk full), which io.Copy does not
// tell apart from a failed read.
type fileWriter struct {
	f   *os.File
	err error
}

func (w *fileWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if err != nil {
		w.err = err
	}
	return n, err
}

func (c *cache) add(hexDigest string, size int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[hexDigest]; ok {
		c.lru.MoveToFront(el)
		return
	}
	c.entries[hexDigest] = c.lru.PushFront(&cacheEntry{hexDigest, size})
	c.bytes += size
	c.evictLocked()
	metrics.S3CacheBytes.Set(float64(c.bytes))
}

// evictLocked drops least recently used copies until the cache fits.
func (c *cache) evictLocked() {
	for c.bytes > c.limit && c.lru.Len() > 0 {
		e := c.lru.Remove(c.lru.Back()).(*cacheEntry)
		delete(c.entries, e.hex)
		c.bytes -= e.size
		_ = os.Remove(c.path(e.hex))
	}
}

func (c *cache) remove(hexDigest string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[hexDigest]; ok {
		e := c.lru.Remove(el).(*cacheEntry)
		delete(c.entries, e.hex)
		c.bytes -= e.size
		_ = os.Remove(c.path(e.hex))
		metrics.S3CacheBytes.Set(float64(c.bytes))
	}
}
