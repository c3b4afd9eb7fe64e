package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"sync"
	"sync/atomic"

	lru "github.com/hashicorp/golang-lru/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/sourceraft/sourceraft/metrics"
	"github.com/sourceraft/sourceraft/storage"
)

// SmallBlobSize is the largest blob served from memory. Most Flux
// artifacts are a few KiB; for them the open, fstat and close of a file
// cost more than the send, and a blob never changes, so a copy held by
// digest is always valid. 64 KiB keeps the cache (smallBlobEntries of
// them) at 64 MiB at most while covering the typical kustomization.
const SmallBlobSize = 64 << 10

const smallBlobEntries = 1024

// blobState is what this process knows about blob files beyond the
// database: which it has verified, which failed, and the small ones it
// holds in memory. None of it is replicated, and a restart forgets it, so
// every blob is verified again the first time the new process serves it.
type blobState struct {
	mu       sync.Mutex
	verified map[string]bool
	cache    *lru.Cache[string, []byte]
	// onCorrupt is told about every blob file found not to match its
	// digest, so it can be repaired from a peer.
	onCorrupt func(digest string)

	verifiedN, corruptN, repairedN atomic.Uint64
}

func (s *blobState) init() {
	s.verified = map[string]bool{}
	c, err := lru.New[string, []byte](smallBlobEntries)
	if err != nil {
		panic(err) // only for a non-positive size
	}
	s.cache = c
}

func (s *blobState) isVerified(digest string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.verified[digest]
}

// forget drops what this process knew of a blob whose file went.
func (f *FSM) forget(digest string) {
	f.blobs.mu.Lock()
	delete(f.blobs.verified, digest)
	f.blobs.mu.Unlock()
	f.blobs.cache.Remove(digest)
}

// checked records the outcome of hashing a blob file: counted, and a
// mismatch handed to the repair hook.
func (f *FSM) checked(digest, sum string) error {
	if sum == digest {
		f.blobs.mu.Lock()
		if !f.blobs.verified[digest] {
			f.blobs.verified[digest] = true
			f.blobs.verifiedN.Add(1)
			metrics.BlobChecks.WithLabelValues("verified").Inc()
		}
		f.blobs.mu.Unlock()
		return nil
	}
	return f.corrupt(digest, "file hashes to "+sum)
}

// corrupt counts a blob file found bad and reports it for repair.
func (f *FSM) corrupt(digest, why string) error {
	f.blobs.mu.Lock()
	delete(f.blobs.verified, digest)
	hook := f.blobs.onCorrupt
	f.blobs.mu.Unlock()
	f.blobs.corruptN.Add(1)
	metrics.BlobChecks.WithLabelValues("corrupt").Inc()
	f.blobs.cache.Remove(digest)
	if hook != nil {
		hook(digest)
	}
	return fmt.Errorf("blob %s: %s: %w", digest, why, storage.ErrCorrupt)
}

// OnCorrupt sets the function told about every blob file found corrupt
// (by a first download or the scrub); it should fetch a good copy from a
// peer and hand it to Repair. It runs on the goroutine that found it.
func (f *FSM) OnCorrupt(fn func(digest string)) {
	f.blobs.mu.Lock()
	f.blobs.onCorrupt = fn
	f.blobs.mu.Unlock()
}

// Content is an artifact and its bytes, opened for one download: Data for
// a small blob held in memory (always verified), File otherwise. A Remote
// blob has neither until the caller fetches it from the object store and
// attaches it. Close it.
type Content struct {
	Artifact storage.Artifact
	Data     []byte
	File     *os.File
	Remote   bool
	f        *FSM
	verified bool
}

// Attach gives remote content its bytes: fh, a file the object store's
// cache verified against the blob digest. A small blob is read into memory
// and held like a local one, so the next download needs no fetch.
func (c *Content) Attach(fh *os.File) error {
	c.File, c.verified = fh, true
	if c.Artifact.Size > SmallBlobSize {
		return nil
	}
	defer c.Close()
	data := make([]byte, c.Artifact.Size)
	if _, err := io.ReadFull(fh, data); err != nil {
		return fmt.Errorf("read %s: %w", c.Artifact.Blob(), err)
	}
	c.f.blobs.cache.Add(c.Artifact.Blob(), data)
	c.Data = data
	return nil
}

// Size is the length of the content.
func (c *Content) Size() int64 { return c.Artifact.Size }

// Verified reports whether this process has checked the blob file against
// its digest; a file not verified must be served through Check.
func (c *Content) Verified() bool { return c.verified }

// Check records the sha256 digest ("sha256:<hex>") a download computed
// over the whole file: nil if it is the artifact's blob address (whatever
// algorithm its Digest is in), otherwise an
// storage.ErrCorrupt error after the blob is reported for repair.
func (c *Content) Check(sum string) error {
	if err := c.f.checked(c.Artifact.Blob(), sum); err != nil {
		return err
	}
	c.verified = true
	return nil
}

// VerifyNow hashes the whole file before anything is sent, for downloads
// (ranges) that cannot stream through the hash.
func (c *Content) VerifyNow() error {
	if c.verified || c.File == nil {
		return nil
	}
	if _, err := c.File.Seek(0, io.SeekStart); err != nil {
		return err
	}
	sum, _, err := readerDigest(c.File)
	if err != nil {
		return fmt.Errorf("verify %s: %w", c.Artifact.Blob(), err)
	}
	if _, err := c.File.Seek(0, io.SeekStart); err != nil {
		return err
	}
	return c.Check(sum)
}

// Reader returns the content as one io.ReadSeeker.
func (c *Content) Reader() io.ReadSeeker {
	if c.File != nil {
		return c.File
	}
	return bytes.NewReader(c.Data)
}

// Close closes the file; further calls do nothing.
func (c *Content) Close() error {
	if c.File == nil {
		return nil
	}
	err := c.File.Close()
	c.File = nil
	if err != nil && !errors.Is(err, fs.ErrClosed) {
		return err
	}
	return nil
}

// Open looks up the artifact at k and opens its blob in one call: the
// record is decoded once, a small verified blob comes from memory, and a
// file is open before any byte is sent, so a delete or garbage collection
// applied meanwhile cannot take it away (an unlinked file stays readable
// through its descriptor, and is never written again).
func (f *FSM) Open(k storage.Key) (*Content, error) {
	c, err := f.open(k)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", k, err)
	}
	return c, nil
}

func (f *FSM) open(k storage.Key) (*Content, error) {
	for attempt := 0; ; attempt++ {
		a, err := f.Artifact(k)
		if err != nil {
			return nil, err
		}
		if a.Size <= SmallBlobSize {
			if data, ok := f.blobs.cache.Get(a.Blob()); ok {
				return &Content{Artifact: a, Data: data, f: f, verified: true}, nil
			}
		}
		fh, err := os.Open(f.dirs.blob(a.Blob()))
		if errors.Is(err, fs.ErrNotExist) && f.BlobPlace(a.Blob()) == Remote {
			return &Content{Artifact: a, Remote: true, f: f}, nil
		}
		if errors.Is(err, fs.ErrNotExist) && attempt == 0 {
			continue // deleted since the lookup, or replaced: look again
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil, f.corrupt(a.Blob(), "file is missing")
		}
		if err != nil {
			return nil, err
		}
		c := &Content{Artifact: a, File: fh, f: f, verified: f.blobs.isVerified(a.Blob())}
		if a.Size <= SmallBlobSize {
			return c, f.loadSmall(c)
		}
		if st, err := fh.Stat(); err != nil || st.Size() != a.Size {
			fh.Close()
			if err == nil {
				err = f.corrupt(a.Blob(), fmt.Sprintf("file has %d bytes, want %d", st.Size(), a.Size))
			}
			return nil, err
		}
		return c, nil
	}
}

// loadSmall reads a small blob into memory, verifies it and caches it:
// it is checked before its first byte is sent.
func (f *FSM) loadSmall(c *Content) error {
	defer c.Close()
	data := make([]byte, c.Artifact.Size+1)
	n, err := io.ReadFull(c.File, data)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return err
	}
	data = data[:n]
	sum, _, _ := readerDigest(bytes.NewReader(data))
	if err := c.Check(sum); err != nil {
		return err
	}
	f.blobs.cache.Add(c.Artifact.Blob(), data)
	c.Data = data
	return nil
}

// Artifact returns the artifact at k (its object's current artifact when k
// is the alias), or storage.ErrNotFound.
func (f *FSM) Artifact(k storage.Key) (storage.Artifact, error) {
	// Loaded before the transaction: a change committed meanwhile has
	// replaced it, and what this lookup puts into it is never read.
	cache := f.arts.Load()
	if a, ok := cache.get(k); ok {
		return a, nil
	}
	var a storage.Artifact
	err := f.view(func(tx *bolt.Tx) error {
		path := resolve(tx, k)
		if path == nil {
			return storage.ErrNotFound
		}
		v := tx.Bucket(bucketArtifacts).Get(path)
		if v == nil {
			return storage.ErrNotFound
		}
		return decodeArtifact(string(path), v, &a)
	})
	if err != nil {
		return storage.Artifact{}, fmt.Errorf("artifact %s: %w", k, err)
	}
	cache.put(k, a)
	return a, nil
}

// artifactCacheEntries bounds an artifact cache; it only holds keys that
// name a stored artifact (a path, or an object's alias).
const artifactCacheEntries = 1 << 16

// artifactCache holds the artifact records decoded since artifacts last
// changed, so that serving a key is a map lookup rather than a read
// transaction and a JSON decode per request. It is never updated: every
// commit that changes an artifact replaces it with an empty one.
type artifactCache struct {
	mu sync.RWMutex
	m  map[string]storage.Artifact // by key path
}

func newArtifactCache() *artifactCache {
	return &artifactCache{m: map[string]storage.Artifact{}}
}

// get returns a copy callers may change.
func (c *artifactCache) get(k storage.Key) (storage.Artifact, bool) {
	c.mu.RLock()
	a, ok := c.m[k.String()]
	c.mu.RUnlock()
	a.Metadata = maps.Clone(a.Metadata)
	return a, ok
}

func (c *artifactCache) put(k storage.Key, a storage.Artifact) {
	a.Metadata = maps.Clone(a.Metadata)
	c.mu.Lock()
	if len(c.m) < artifactCacheEntries {
		c.m[k.String()] = a
	}
	c.mu.Unlock()
}

// Repair replaces the blob file of digest with content read from r (a
// peer's copy), which must hash to digest: it is written to a temporary
// file, verified, synced and renamed over the bad one, so the blob file is
// never written in place. A blob no longer referenced is not recreated.
func (f *FSM) Repair(digest string, size int64, r io.Reader) error {
	if !validDigest(digest) {
		return fmt.Errorf("repair %s: not a blob digest", digest)
	}
	if !f.HasBlob(digest) {
		return fmt.Errorf("repair %s: %w", digest, storage.ErrNotFound)
	}
	// The copy (from the network) is written without the lock that apply's
	// unlinks take; only the check and the rename hold it.
	tmp, err := f.dirs.writeTemp(digest, size, r, f.opts.NoSync)
	if err != nil {
		return fmt.Errorf("repair: %w", err)
	}
	// The record is read in a transaction holding filesMu (the lock order
	// of apply: database, then files), so no unlink can come between.
	err = f.view(func(tx *bolt.Tx) error {
		f.filesMu.Lock()
		defer f.filesMu.Unlock()
		if tx.Bucket(bucketBlobs).Get([]byte(digest)) == nil {
			return storage.ErrNotFound
		}
		return f.dirs.publishTemp(tmp, digest, f.opts.NoSync)
	})
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("repair %s: %w", digest, err)
	}
	f.blobs.repairedN.Add(1)
	metrics.BlobChecks.WithLabelValues("repaired").Inc()
	f.blobs.cache.Remove(digest)
	f.blobs.mu.Lock()
	f.blobs.verified[digest] = true
	f.blobs.mu.Unlock()
	return nil
}

// IntegrityStats counts what verification found since this process started.
type IntegrityStats struct {
	Verified uint64 `json:"verified"`
	Corrupt  uint64 `json:"corrupt"`
	Repaired uint64 `json:"repaired"`
}

// Integrity returns the verification counters.
func (f *FSM) Integrity() IntegrityStats {
	return IntegrityStats{Verified: f.blobs.verifiedN.Load(), Corrupt: f.blobs.corruptN.Load(), Repaired: f.blobs.repairedN.Load()}
}
