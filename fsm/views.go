package fsm

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"strings"

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
	Artifacts    int
	Bytes        int64 // sum of artifact sizes, shared blobs counted per artifact
	Blobs        int
	BlobBytes    int64
	Uploads      int
	AppliedIndex uint64
}

// Artifact returns the artifact at path, or storage.ErrNotFound.
func (f *FSM) Artifact(path string) (storage.Artifact, error) {
	var a storage.Artifact
	err := f.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketArtifacts).Get([]byte(path))
		if v == nil {
			return storage.ErrNotFound
		}
		return decodeArtifact(path, v, &a)
	})
	if err != nil {
		return storage.Artifact{}, fmt.Errorf("artifact %s: %w", path, err)
	}
	return a, nil
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

// Stats counts the applied state in one read transaction.
func (f *FSM) Stats() (Stats, error) {
	var s Stats
	err := f.view(func(tx *bolt.Tx) error {
		var err error
		if s.AppliedIndex, err = readApplied(tx); err != nil {
			return err
		}
		err = tx.Bucket(bucketArtifacts).ForEach(func(k, v []byte) error {
			var a struct {
				Size int64 `json:"size"`
			}
			if err := json.Unmarshal(v, &a); err != nil {
				return fmt.Errorf("artifact %s: %v: %w", k, err, storage.ErrCorrupt)
			}
			s.Artifacts++
			s.Bytes += a.Size
			return nil
		})
		if err != nil {
			return err
		}
		err = tx.Bucket(bucketBlobs).ForEach(func(k, v []byte) error {
			r, err := decodeBlobRecord(v)
			if err != nil {
				return fmt.Errorf("blob %s: %w", k, err)
			}
			s.Blobs++
			s.BlobBytes += r.Size
			return nil
		})
		if err != nil {
			return err
		}
		s.Uploads = tx.Bucket(bucketUploads).Stats().KeyN
		return nil
	})
	if err != nil {
		return Stats{}, fmt.Errorf("stats: %w", err)
	}
	return s, nil
}

// ContentHash is the sha256 of every bucket's keys and values except the
// applied index, in key order: replicas that applied the same commands have
// the same hash, whatever their batching or restarts. It reads the whole
// database, chunks included, in one read transaction, and returns the
// applied index that state is at.
func (f *FSM) ContentHash() (string, uint64, error) {
	h := sha256.New()
	var applied uint64
	err := f.view(func(tx *bolt.Tx) error {
		var err error
		if applied, err = readApplied(tx); err != nil {
			return err
		}
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			hashBucket(h, name, b, bytes.Equal(name, bucketMeta))
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

// digestHashes are the algorithms Flux digests artifacts with that Verify
// can check.
var digestHashes = map[string]func() hash.Hash{
	"sha256": sha256.New,
	"sha384": sha512.New384,
	"sha512": sha512.New,
}

// Verify recomputes the blob's digest from its chunks. It fails with
// storage.ErrCorrupt when a chunk fails its checksum and
// storage.ErrDigestMismatch when the content hashes to another digest.
func (f *FSM) Verify(digest string) error {
	algo, want, _ := strings.Cut(digest, ":")
	newHash, ok := digestHashes[algo]
	if !ok {
		return fmt.Errorf("verify %s: unsupported digest algorithm %q", digest, algo)
	}
	b, err := f.OpenBlob(digest)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	defer b.Close()
	h := newHash()
	if _, err := b.WriteTo(h); err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("verify %s: content hashes to %s:%s: %w", digest, algo, got, storage.ErrDigestMismatch)
	}
	return nil
}
