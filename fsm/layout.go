package fsm

import (
	"encoding/binary"
	"fmt"

	"github.com/sourceraft/sourceraft/storage"
	bolt "go.etcd.io/bbolt"
)

var (
	bucketMeta      = []byte("meta")
	bucketArtifacts = []byte("artifacts")
	bucketBlobs     = []byte("blobs")
	bucketChunks    = []byte("chunks")
	bucketUploads   = []byte("uploads")
	bucketNodes     = []byte("nodes")
	// bucketCurrent maps an object (kind/namespace/name/) to the path of
	// its newest committed artifact, which its alias serves.
	bucketCurrent = []byte("current")

	// allBuckets are layout 3's; bucketChunks is only in a layout 2 file,
	// until its migration drops it.
	allBuckets = [][]byte{bucketMeta, bucketArtifacts, bucketBlobs, bucketUploads, bucketNodes}

	keyApplied  = []byte("applied")
	keyLayout   = []byte("layout")
	keyCounters = []byte("counters")
	keyChunk    = []byte("c")
)

// layoutVersion changes when a release stores records differently; Open
// refuses a file it does not understand rather than misreading it, and
// migrates layoutV2 (blob bytes in the chunks bucket) in place.
const (
	layoutVersion = 3
	layoutV2      = 2
)

// maxIDLen bounds upload ids, node ids and digests, which become bbolt keys:
// a key bbolt would refuse must be rejected as a business error before any
// write, never discovered halfway through a command.
const maxIDLen = 255

func seqKey(seq uint32) []byte {
	return binary.BigEndian.AppendUint32(nil, seq)
}

// A layout 2 chunk is the only value of a bucket of its own inside its
// upload's bucket; only the migration reads them.

// getChunk returns chunk seq of an upload, nil if it is missing.
func getChunk(upload *bolt.Bucket, seq uint32) []byte {
	b := upload.Bucket(seqKey(seq))
	if b == nil {
		return nil
	}
	return b.Get(keyChunk)
}

func uint64Value(v uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, v)
}

// readApplied returns the applied index stored in meta; zero for a new file.
func readApplied(tx *bolt.Tx) (uint64, error) {
	v := tx.Bucket(bucketMeta).Get(keyApplied)
	if v == nil {
		return 0, nil
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("applied index is %d bytes: %w", len(v), storage.ErrCorrupt)
	}
	return binary.BigEndian.Uint64(v), nil
}

// uploadRecord is an upload that has chunks but no commit yet.
type uploadRecord struct {
	StartedAt int64
	Chunks    uint32 // also the next expected seq
	Bytes     int64
}

func (r uploadRecord) encode() []byte {
	b := make([]byte, 0, 20)
	b = binary.BigEndian.AppendUint64(b, uint64(r.StartedAt))
	b = binary.BigEndian.AppendUint32(b, r.Chunks)
	return binary.BigEndian.AppendUint64(b, uint64(r.Bytes))
}

func decodeUploadRecord(v []byte) (uploadRecord, error) {
	if len(v) != 20 {
		return uploadRecord{}, fmt.Errorf("upload record is %d bytes: %w", len(v), storage.ErrCorrupt)
	}
	return uploadRecord{
		StartedAt: int64(binary.BigEndian.Uint64(v)),
		Chunks:    binary.BigEndian.Uint32(v[8:]),
		Bytes:     int64(binary.BigEndian.Uint64(v[12:])),
	}, nil
}

// blobRecord is committed content, shared by every artifact with its
// digest; the bytes are the file blobs/<algo>/<hex> beside the database.
type blobRecord struct {
	Size int64
	Refs uint32
}

func (r blobRecord) encode() []byte {
	b := make([]byte, 0, 12)
	b = binary.BigEndian.AppendUint64(b, uint64(r.Size))
	return binary.BigEndian.AppendUint32(b, r.Refs)
}

func decodeBlobRecord(v []byte) (blobRecord, error) {
	if len(v) != 12 {
		return blobRecord{}, fmt.Errorf("blob record is %d bytes: %w", len(v), storage.ErrCorrupt)
	}
	return blobRecord{Size: int64(binary.BigEndian.Uint64(v)), Refs: binary.BigEndian.Uint32(v[8:])}, nil
}

// counters are the totals Stats reports, kept in meta by every command that
// changes them, in the same transaction, so nothing ever counts records.
type counters struct {
	Artifacts     int64
	ArtifactBytes int64 // shared blobs counted once per artifact
	Blobs         int64
	BlobBytes     int64
}

func (c counters) encode() []byte {
	b := make([]byte, 0, 32)
	for _, v := range []int64{c.Artifacts, c.ArtifactBytes, c.Blobs, c.BlobBytes} {
		b = binary.BigEndian.AppendUint64(b, uint64(v))
	}
	return b
}

func readCounters(tx *bolt.Tx) (counters, error) {
	v := tx.Bucket(bucketMeta).Get(keyCounters)
	if v == nil {
		return counters{}, nil
	}
	if len(v) != 32 {
		return counters{}, fmt.Errorf("counters are %d bytes: %w", len(v), storage.ErrCorrupt)
	}
	u := func(i int) int64 { return int64(binary.BigEndian.Uint64(v[8*i:])) }
	return counters{Artifacts: u(0), ArtifactBytes: u(1), Blobs: u(2), BlobBytes: u(3)}, nil
}
