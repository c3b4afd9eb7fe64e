package fsm

import (
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"sync"

	"github.com/sourceraft/sourceraft/storage"
	bolt "go.etcd.io/bbolt"
)

// chunkBuffers recycles the per-Blob chunk buffers across downloads.
var chunkBuffers = sync.Pool{New: func() any {
	b := make([]byte, storage.MaxChunkSize)
	return &b
}}

// Blob reads one blob's content. Each chunk is copied out of bbolt in its
// own short read transaction and its checksum verified before any of its
// bytes are returned. A Blob is for one goroutine at a time.
//
// The copy is what makes a download safe: once its transaction ends,
// bbolt may hand a chunk's pages to the next write (the artifact deleted,
// another stored), so nothing may refer to them after that. sendfile from
// the database file did: the kernel queues file pages in socket buffers by
// reference, and a consumer reading later received whatever the pages
// held by then (TestWriteToTCPSurvivesPageReuse).
type Blob struct {
	f      *FSM
	digest string
	upload []byte // chunks bucket, pinned at open so chunk offsets stay valid
	size   int64
	chunks uint32
	off    int64

	buf    *[]byte // from chunkBuffers, taken on the first read
	loaded bool
	cur    []byte // verified content of chunk seq, which starts at start
	seq    uint32
	start  int64
	starts []int64 // chunk offsets, built on the first non-sequential read
	closed bool
}

// OpenBlob returns a reader over the blob with digest, or storage.ErrNotFound.
func (f *FSM) OpenBlob(digest string) (*Blob, error) {
	var rec blobRecord
	err := f.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketBlobs).Get([]byte(digest))
		if v == nil {
			return storage.ErrNotFound
		}
		var err error
		rec, err = decodeBlobRecord(v)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open blob %s: %w", digest, err)
	}
	return &Blob{f: f, digest: digest, upload: []byte(rec.Upload), size: rec.Size, chunks: rec.Chunks}, nil
}

// Size is the blob's length in bytes.
func (b *Blob) Size() int64 { return b.size }

// Read reads from the current chunk, fetching and verifying the next one
// when it is used up.
func (b *Blob) Read(p []byte) (int, error) {
	if b.closed {
		return 0, b.errClosed()
	}
	if b.off >= b.size {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	if err := b.locate(b.off); err != nil {
		return 0, err
	}
	n := copy(p, b.cur[b.off-b.start:])
	b.off += int64(n)
	return n, nil
}

// Seek sets the offset of the next Read or WriteTo; chunks are only fetched
// when read.
func (b *Blob) Seek(off int64, whence int) (int64, error) {
	if b.closed {
		return 0, b.errClosed()
	}
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += b.off
	case io.SeekEnd:
		off += b.size
	default:
		return 0, fmt.Errorf("blob %s: seek: invalid whence %d", b.digest, whence)
	}
	if off < 0 {
		return 0, fmt.Errorf("blob %s: seek: negative position %d", b.digest, off)
	}
	b.off = off
	return off, nil
}

// WriteTo writes the rest of the blob with one Write per verified chunk.
func (b *Blob) WriteTo(w io.Writer) (int64, error) {
	if b.closed {
		return 0, b.errClosed()
	}
	var total int64
	for b.off < b.size {
		if err := b.locate(b.off); err != nil {
			return total, err
		}
		p := b.cur[b.off-b.start:]
		n, err := w.Write(p)
		b.off += int64(n)
		total += int64(n)
		if err != nil {
			return total, err
		}
		if n < len(p) {
			return total, io.ErrShortWrite
		}
	}
	return total, nil
}

// Close returns the chunk buffer to the pool; further calls do nothing.
func (b *Blob) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	b.cur, b.loaded = nil, false
	if b.buf != nil {
		chunkBuffers.Put(b.buf)
		b.buf = nil
	}
	return nil
}

func (b *Blob) errClosed() error {
	return fmt.Errorf("blob %s: %w", b.digest, fs.ErrClosed)
}

// locate makes the chunk holding off, which is below size, the current one.
func (b *Blob) locate(off int64) error {
	if b.loaded && off >= b.start && off < b.start+int64(len(b.cur)) {
		return nil
	}
	// Reading on from the current chunk needs no index; empty chunks are
	// legal and skipped.
	if !b.loaded && off == 0 || b.loaded && off == b.start+int64(len(b.cur)) {
		seq, start := uint32(0), int64(0)
		if b.loaded {
			seq, start = b.seq+1, off
		}
		for {
			if err := b.load(seq, start); err != nil {
				return err
			}
			if len(b.cur) > 0 {
				return nil
			}
			seq++
		}
	}
	if b.starts == nil {
		if err := b.index(); err != nil {
			return err
		}
	}
	i := b.chunkAt(off)
	return b.load(i, b.starts[i])
}

// chunkAt returns the chunk holding off, which is below size; the index
// must be built.
func (b *Blob) chunkAt(off int64) uint32 {
	return uint32(sort.Search(int(b.chunks), func(i int) bool { return b.starts[i+1] > off }))
}

// load copies chunk seq into the buffer and verifies it.
func (b *Blob) load(seq uint32, start int64) error {
	b.loaded = false
	if seq >= b.chunks {
		return b.corrupt(seq, "past the last chunk")
	}
	if b.buf == nil {
		b.buf = chunkBuffers.Get().(*[]byte)
	}
	var crc uint32
	err := b.f.view(func(tx *bolt.Tx) error {
		chunks := tx.Bucket(bucketChunks).Bucket(b.upload)
		if chunks == nil {
			return fmt.Errorf("blob %s is gone: %w", b.digest, storage.ErrNotFound)
		}
		v := getChunk(chunks, seq)
		if len(v) < 4 || len(v)-4 > len(*b.buf) {
			return b.corrupt(seq, fmt.Sprintf("stored as %d bytes", len(v)))
		}
		crc = binary.BigEndian.Uint32(v)
		b.cur = (*b.buf)[:copy(*b.buf, v[4:])]
		return nil
	})
	if err != nil {
		return err
	}
	// Verify the copy: it is what will be returned.
	if checksum(b.cur) != crc {
		return b.corrupt(seq, "checksum mismatch")
	}
	end := start + int64(len(b.cur))
	if end > b.size || seq == b.chunks-1 && end != b.size {
		return b.corrupt(seq, fmt.Sprintf("ends at %d of %d bytes", end, b.size))
	}
	b.loaded, b.seq, b.start = true, seq, start
	return nil
}

// index records every chunk's offset from the stored value lengths, for
// reads that do not follow on from the current chunk.
func (b *Blob) index() error {
	starts := make([]int64, 0, int(b.chunks)+1)
	var off int64
	err := b.f.view(func(tx *bolt.Tx) error {
		chunks := tx.Bucket(bucketChunks).Bucket(b.upload)
		if chunks == nil {
			return fmt.Errorf("blob %s is gone: %w", b.digest, storage.ErrNotFound)
		}
		c := chunks.Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			seq := uint32(len(starts))
			v := getChunk(chunks, seq)
			if string(k) != string(seqKey(seq)) || len(v) < 4 {
				return b.corrupt(seq, "missing")
			}
			starts = append(starts, off)
			off += int64(len(v) - 4)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(starts) != int(b.chunks) || off != b.size {
		return fmt.Errorf("blob %s: %d chunks of %d bytes, want %d of %d: %w",
			b.digest, len(starts), off, b.chunks, b.size, storage.ErrCorrupt)
	}
	b.starts = append(starts, off)
	return nil
}

func (b *Blob) corrupt(seq uint32, what string) error {
	return fmt.Errorf("blob %s chunk %d: %s: %w", b.digest, seq, what, storage.ErrCorrupt)
}
