package fsm

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"

	"github.com/sourceraft/sourceraft/storage"
	bolt "go.etcd.io/bbolt"
)

// Upload is an upload that has chunks but no commit yet.
type Upload struct {
	ID        string
	StartedAt int64
	Chunks    uint32
	Bytes     int64
}

// Stats summarises the applied state.
type Stats struct {
	Artifacts int
	Bytes     int64 // sum of artifact sizes, shared blobs counted per artifact
	Blobs     int
	BlobBytes int64
	// RemoteBlobs of Blobs rest in the object store; GarbageBlobs are
	// objects there the leader has yet to delete.
	RemoteBlobs  int
	GarbageBlobs int
	Uploads      int
	AppliedIndex uint64
}

// List returns the artifacts matching filter, sorted by path.
func (f *FSM) List(filter storage.Filter) ([]storage.Artifact, error) {
	// Paths start kind/namespace/name/: seek to the longest prefix the
	// filter pins down instead of scanning everything.
	var prefix string
	for _, s := range []string{filter.Kind, filter.Namespace, filter.Name} {
		if s == "" {
			break
		}
		prefix += s + "/"
	}
	var out []storage.Artifact
	err := f.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketArtifacts).Cursor()
		for k, v := c.Seek([]byte(prefix)); k != nil && bytes.HasPrefix(k, []byte(prefix)); k, v = c.Next() {
			var a storage.Artifact
			if err := decodeArtifact(string(k), v, &a); err != nil {
				return err
			}
			if filter.Match(a) {
				out = append(out, a)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list artifacts: %w", err)
	}
	return out, nil
}

func decodeArtifact(path string, v []byte, a *storage.Artifact) error {
	if err := json.Unmarshal(v, a); err != nil {
		return fmt.Errorf("artifact %s: %v: %w", path, err, storage.ErrCorrupt)
	}
	return nil
}

// HasBlob reports whether content with digest is stored.
func (f *FSM) HasBlob(digest string) bool {
	var ok bool
	_ = f.view(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucketBlobs).Get([]byte(digest)) != nil
		return nil
	})
	return ok
}

// Uploads returns the uncommitted uploads, sorted by id.
func (f *FSM) Uploads() ([]Upload, error) {
	var out []Upload
	err := f.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketUploads).ForEach(func(k, v []byte) error {
			r, err := decodeUploadRecord(v)
			if err != nil {
				return fmt.Errorf("upload %q: %w", k, err)
			}
			out = append(out, Upload{ID: string(k), StartedAt: r.StartedAt, Chunks: r.Chunks, Bytes: r.Bytes})
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list uploads: %w", err)
	}
	return out, nil
}

// Nodes returns the registered nodes, sorted by id.
func (f *FSM) Nodes() ([]Node, error) {
	var out []Node
	err := f.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketNodes).ForEach(func(k, v []byte) error {
			var n Node
			if err := json.Unmarshal(v, &n); err != nil {
				return fmt.Errorf("node %q: %v: %w", k, err, storage.ErrCorrupt)
			}
			out = append(out, n)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	return out, nil
}

// Stats reads the counters apply maintains, in one short read transaction.
func (f *FSM) Stats() (Stats, error) {
	var s Stats
	err := f.view(func(tx *bolt.Tx) error {
		var err error
		if s.AppliedIndex, err = readApplied(tx); err != nil {
			return err
		}
		c, err := readCounters(tx)
		if err != nil {
			return err
		}
		s.Artifacts, s.Bytes, s.Blobs, s.BlobBytes = int(c.Artifacts), c.ArtifactBytes, int(c.Blobs), c.BlobBytes
		s.Uploads = tx.Bucket(bucketUploads).Stats().KeyN
		s.RemoteBlobs, s.GarbageBlobs = keyCount(tx, bucketRemote), keyCount(tx, bucketGarbage)
		return nil
	})
	if err != nil {
		return Stats{}, fmt.Errorf("stats: %w", err)
	}
	return s, nil
}

// ContentHash is the sha256 of every bucket's keys and values except the
// applied index, in key order, then of every blob file's digest and size
// on disk: replicas that applied the same commands have the same hash,
// whatever their batching, restarts or snapshots, and a blob file missing
// or cut short changes it. A blob file's name is its digest; that its
// bytes match it is what verification on first serve and the scrub check.
// It reads the metadata in one read transaction and returns the applied
// index that state is at.
func (f *FSM) ContentHash() (string, uint64, error) {
	h := sha256.New()
	var applied uint64
	err := f.view(func(tx *bolt.Tx) error {
		var err error
		if applied, err = readApplied(tx); err != nil {
			return err
		}
		err = tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			hashBucket(h, name, b, bytes.Equal(name, bucketMeta))
			return nil
		})
		if err != nil {
			return err
		}
		// Apply unlinks a released blob's file under filesMu after its
		// commit: holding it, every file this transaction sees a record
		// of is still there.
		f.filesMu.Lock()
		defer f.filesMu.Unlock()
		return tx.Bucket(bucketBlobs).ForEach(func(k, _ []byte) error {
			size := int64(-1)
			if st, err := os.Stat(f.dirs.blob(string(k))); err == nil {
				size = st.Size()
			}
			h.Write([]byte{'F'})
			h.Write(k)
			h.Write(binary.BigEndian.AppendUint64(nil, uint64(size)))
			return nil
		})
	})
	if err != nil {
		return "", 0, fmt.Errorf("content hash: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), applied, nil
}

// hashBucket writes each bucket and entry with its kind and lengths so no
// two different layouts hash the same.
func hashBucket(h hash.Hash, name []byte, b *bolt.Bucket, meta bool) {
	field := func(tag byte, p []byte) {
		h.Write([]byte{tag})
		h.Write(binary.AppendUvarint(nil, uint64(len(p))))
		h.Write(p)
	}
	field('B', name)
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		switch {
		case meta && bytes.Equal(k, keyApplied):
		case v == nil:
			hashBucket(h, k, b.Bucket(k), false)
		default:
			field('K', k)
			field('V', v)
		}
	}
	h.Write([]byte{'E'})
}

// Verify hashes the blob file of digest: nil if it matches, an error
// wrapping storage.ErrCorrupt (the blob reported for repair) if not, and
// storage.ErrNotFound if no artifact references it any more.
func (f *FSM) Verify(digest string) error {
	return f.VerifyPaced(digest, nil)
}

// VerifyPaced is Verify calling wait(n) before it reads each n bytes, so a
// background scrub can bound its rate.
func (f *FSM) VerifyPaced(digest string, wait func(n int) error) error {
	if !f.HasBlob(digest) {
		return fmt.Errorf("verify %s: %w", digest, storage.ErrNotFound)
	}
	sum, err := f.hashBlobFile(digest, wait)
	if errors.Is(err, fs.ErrNotExist) {
		if !f.HasBlob(digest) {
			return fmt.Errorf("verify %s: %w", digest, storage.ErrNotFound)
		}
		return fmt.Errorf("verify: %w", f.corrupt(digest, "file is missing"))
	}
	if err != nil {
		return fmt.Errorf("verify %s: %w", digest, err)
	}
	if err := f.checked(digest, sum); err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	return nil
}

func (f *FSM) hashBlobFile(digest string, wait func(n int) error) (string, error) {
	fh, err := os.Open(f.dirs.blob(digest))
	if err != nil {
		return "", err
	}
	defer fh.Close()
	var r io.Reader = fh
	if wait != nil {
		r = &pacedReader{r: fh, wait: wait}
	}
	sum, _, err := readerDigest(r)
	return sum, err
}

// pacedReader asks wait before every read.
type pacedReader struct {
	r    io.Reader
	wait func(n int) error
}

func (p *pacedReader) Read(b []byte) (int, error) {
	if err := p.wait(len(b)); err != nil {
		return 0, err
	}
	return p.r.Read(b)
}

// NextBlob returns the first committed blob digest after the given one (""
// for the first), with its size; ok is false past the last.
func (f *FSM) NextBlob(after string) (digest string, size int64, ok bool, err error) {
	err = f.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketBlobs).Cursor()
		k, v := c.Seek([]byte(after))
		if k != nil && string(k) == after {
			k, v = c.Next()
		}
		if k == nil {
			return nil
		}
		rec, err := decodeBlobRecord(v)
		if err != nil {
			return fmt.Errorf("blob %s: %w", k, err)
		}
		digest, size, ok = string(k), rec.Size, true
		return nil
	})
	return digest, size, ok, err
}

// ArtifactWithDigest returns an artifact whose blob is digest (sha256), for a
// repair that asks peers by path. It scans every record: only for the
// rare blob found corrupt.
func (f *FSM) ArtifactWithDigest(digest string) (storage.Artifact, error) {
	var found storage.Artifact
	err := f.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketArtifacts).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if storedRef(string(k), v).blob() == digest {
				return decodeArtifact(string(k), v, &found)
			}
		}
		return storage.ErrNotFound
	})
	if err != nil {
		return storage.Artifact{}, fmt.Errorf("artifact with digest %s: %w", digest, err)
	}
	return found, nil
}

// keyCount is the number of keys in a bucket that may not exist yet.
func keyCount(tx *bolt.Tx, name []byte) int {
	if b := tx.Bucket(name); b != nil {
		return b.Stats().KeyN
	}
	return 0
}
