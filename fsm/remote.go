package fsm

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/sourceraft/sourceraft/storage"
	bolt "go.etcd.io/bbolt"
)

// Remote blobs rest in an object store (--storage-backend=s3) instead of
// files beside the database. The leader writes a blob's bytes to the bucket
// under its content address before it proposes the commit, so the log
// carries only the record:
//
//	remote   sha256 digest → size(8) refs(4), a committed blob in the bucket
//	garbage  sha256 digest → empty, a bucket object no record names any
//	         more, for the leader to delete and then forget
//
// A digest is in at most one of blobs and remote. Both buckets are created
// by the first command that needs them, so a store that never used a
// bucket hashes, snapshots and restores exactly as before. Every replica
// applies the same records whatever backend it runs; only the leader
// touches the bucket, and only after the command is committed.
var (
	bucketRemote  = []byte("remote")
	bucketGarbage = []byte("garbage")
)

// storedBlob is a blob's record and the bucket (blobs or remote) it is in;
// a zero record (Refs 0) is a blob not stored yet.
type storedBlob struct {
	bucket *bolt.Bucket
	rec    blobRecord
	remote bool
}

// storedBlob finds digest among the local and the remote blobs.
func (a *applyCtx) storedBlob(digest []byte) (storedBlob, bool) {
	if rec, ok := getBlob(a.tx.Bucket(bucketBlobs), digest); ok {
		return storedBlob{bucket: a.tx.Bucket(bucketBlobs), rec: rec}, true
	}
	if remote := a.tx.Bucket(bucketRemote); remote != nil {
		if rec, ok := getBlob(remote, digest); ok {
			return storedBlob{bucket: remote, rec: rec, remote: true}, true
		}
	}
	return storedBlob{}, false
}

// bucket returns the named bucket, creating it on first use.
func (a *applyCtx) bucket(name []byte) *bolt.Bucket {
	b, err := a.tx.CreateBucketIfNotExists(name)
	must(err)
	return b
}

func (a *applyCtx) addGarbage(digest []byte) {
	must(a.bucket(bucketGarbage).Put(digest, []byte{}))
}

// dropGarbage keeps a digest committed again from being deleted.
func (a *applyCtx) dropGarbage(digest []byte) {
	if g := a.tx.Bucket(bucketGarbage); g != nil && g.Get(digest) != nil {
		must(g.Delete(digest))
	}
}

// RemoteCommit records Artifact, whose bytes the leader has written to the
// object store under Artifact.Blob(). The leader fills Digest, Size and
// LastUpdateTime as for a Commit.
type RemoteCommit struct {
	Artifact storage.Artifact
}

type remoteCommitCmd struct {
	RemoteCommit
	raw []byte
}

// EncodeCommitRemote returns the command committing c. It panics if the
// artifact cannot be marshalled, as EncodeCommit does.
func EncodeCommitRemote(c RemoteCommit) []byte {
	a, err := json.Marshal(c.Artifact)
	if err != nil {
		panic(fmt.Errorf("fsm: encode remote commit of %s: %w", c.Artifact.Path(), err))
	}
	return append([]byte{byte(cmdCommitRemote)}, a...)
}

func decodeCommitRemote(body []byte) (remoteCommitCmd, error) {
	c := remoteCommitCmd{raw: body}
	if err := json.Unmarshal(body, &c.Artifact); err != nil {
		return remoteCommitCmd{}, fmt.Errorf("%w: artifact: %v", errMalformed, err)
	}
	return c, nil
}

// EncodeMoveBlobs returns the command recording that the blobs with these
// digests, stored as files until now, are in the object store: the leader
// copied them there first. Replicas remove their files once it commits.
func EncodeMoveBlobs(digests []string) []byte {
	return encodeStrings(cmdMoveBlobs, digests)
}

// EncodeForgetGarbage returns the command dropping garbage records whose
// objects the leader deleted from the object store.
func EncodeForgetGarbage(digests []string) []byte {
	return encodeStrings(cmdForgetGarbage, digests)
}

func applyCommitRemote(a *applyCtx, c remoteCommitCmd) error {
	art := c.Artifact
	if err := validArtifact(art); err != nil {
		return fmt.Errorf("remote commit of %s: %w", art.Path(), err)
	}
	if art.Size < 0 {
		return fmt.Errorf("remote commit of %s: size %d: %w", art.Path(), art.Size, ErrInvalidCommand)
	}
	digest := []byte(art.Blob())
	// Content stored as a file (before a migration reached it) stays
	// there and gains a reference; the migration moves it later.
	ref, stored := a.storedBlob(digest)
	if stored && ref.rec.Size != art.Size {
		return fmt.Errorf("remote commit of %s: %s is stored with %d bytes, not %d: %w",
			art.Path(), art.Blob(), ref.rec.Size, art.Size, storage.ErrDigestMismatch)
	}
	if !stored {
		ref = storedBlob{bucket: a.bucket(bucketRemote), remote: true}
	}
	a.dropGarbage(digest)
	a.reference(digest, ref, art.Size)
	a.putArtifact(art.Path(), c.raw, art.Size)
	return nil
}

// applyMoveBlobs moves blob records from files to the object store. A
// digest no record names any more (released while it was being copied)
// is garbage: the object the leader wrote must go.
func applyMoveBlobs(a *applyCtx, digests []string) error {
	for _, d := range digests {
		if !validDigest(d) {
			return fmt.Errorf("move blobs: %q is not a sha256 digest: %w", d, ErrInvalidCommand)
		}
	}
	for _, d := range digests {
		key := []byte(d)
		ref, ok := a.storedBlob(key)
		switch {
		case !ok:
			a.addGarbage(key)
		case !ref.remote:
			must(ref.bucket.Delete(key))
			must(a.bucket(bucketRemote).Put(key, ref.rec.encode()))
			a.dropGarbage(key)
			a.unlinkBlobs = append(a.unlinkBlobs, d)
		}
	}
	return nil
}

func applyForgetGarbage(a *applyCtx, digests []string) error {
	for _, d := range digests {
		a.dropGarbage([]byte(d))
	}
	return nil
}

// Place is where a blob's bytes rest.
type Place int

// The places of a blob.
const (
	// Unknown: no record names the digest.
	Unknown Place = iota
	// Local: a file beside the database.
	Local
	// Remote: an object in the object store.
	Remote
	// Garbage: an object in the object store no record names; the leader
	// deletes it.
	Garbage
)

// BlobPlace returns where the blob digest rests.
func (f *FSM) BlobPlace(digest string) Place {
	p := Unknown
	_ = f.view(func(tx *bolt.Tx) error {
		p = blobPlace(tx, []byte(digest))
		return nil
	})
	return p
}

func blobPlace(tx *bolt.Tx, digest []byte) Place {
	if tx.Bucket(bucketBlobs).Get(digest) != nil {
		return Local
	}
	for _, b := range []struct {
		name  []byte
		place Place
	}{{bucketRemote, Remote}, {bucketGarbage, Garbage}} {
		if bk := tx.Bucket(b.name); bk != nil && bk.Get(digest) != nil {
			return b.place
		}
	}
	return Unknown
}

// GarbageBlobs returns up to limit digests whose objects the leader should
// delete from the object store, in digest order.
func (f *FSM) GarbageBlobs(limit int) ([]string, error) {
	var out []string
	err := f.view(func(tx *bolt.Tx) error {
		g := tx.Bucket(bucketGarbage)
		if g == nil {
			return nil
		}
		c := g.Cursor()
		for k, _ := c.First(); k != nil && len(out) < limit; k, _ = c.Next() {
			out = append(out, string(k))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list garbage blobs: %w", err)
	}
	return out, nil
}

// OpenBlobFile opens the file of a local blob, for the leader to copy it
// to the object store. The file may be unlinked meanwhile by a release or
// a move; the descriptor keeps it readable.
func (f *FSM) OpenBlobFile(digest string) (*os.File, error) {
	if !validDigest(digest) {
		return nil, fmt.Errorf("open blob file %q: not a sha256 digest", digest)
	}
	fh, err := os.Open(f.dirs.blob(digest))
	if err != nil {
		return nil, fmt.Errorf("open blob file: %w", err)
	}
	return fh, nil
}
