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

	allBuckets = [][]byte{bucketMeta, bucketArtifacts, bucketBlobs, bucketChunks, bucketUploads, bucketNodes}

	keyApplied = []byte("applied")
	keyLayout  = []byte("layout")
	keyChunk   = []byte("c")
)

// layoutVersion changes when a release stores records differently; Open
// refuses a file it does not understand rather than misreading it.
const layoutVersion = 2

// maxIDLen bounds upload ids, node ids and digests, which become bbolt keys:
// a key bbolt would refuse must be rejected as a business error before any
// write, never discovered halfway through a command.
const maxIDLen = 255

func seqKey(seq uint32) []byte {
	return binary.BigEndian.AppendUint32(nil, seq)
}

// Each chunk is the only value of a bucket of its own inside its upload's
// bucket. bbolt keeps at least two values per leaf and rewrites a whole
// leaf when it changes, so appending chunk n+1 next to chunk n would copy
// chunk n again (and page it back in through the mmap); a bucket per chunk
// is written once and never touched by later appends.

// putChunk stores value as chunk seq of an upload.
func putChunk(upload *bolt.Bucket, seq uint32, value []byte) error {
	b, err := upload.CreateBucket(seqKey(seq))
	if err != nil {
		return err
	}
	return b.Put(keyChunk, value)
}

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

// blobRecord is committed content, shared by every artifact with its digest.
type blobRecord struct {
	Size   int64
	Chunks uint32
	Refs   uint32
	Upload string // the chunks bucket holding the content
}

func (r blobRecord) encode() []byte {
	b := make([]byte, 0, 16+len(r.Upload))
	b = binary.BigEndian.AppendUint64(b, uint64(r.Size))
	b = binary.BigEndian.AppendUint32(b, r.Chunks)
	b = binary.BigEndian.AppendUint32(b, r.Refs)
	return append(b, r.Upload...)
}

func decodeBlobRecord(v []byte) (blobRecord, error) {
	if len(v) <= 16 {
		return blobRecord{}, fmt.Errorf("blob record is %d bytes: %w", len(v), storage.ErrCorrupt)
	}
	return blobRecord{
		Size:   int64(binary.BigEndian.Uint64(v)),
		Chunks: binary.BigEndian.Uint32(v[8:]),
		Refs:   binary.BigEndian.Uint32(v[12:]),
		Upload: string(v[16:]),
	}, nil
}
