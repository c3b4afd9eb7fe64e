package fsm

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"sync"
	"unsafe"

	bolt "go.etcd.io/bbolt"

	"github.com/sourceraft/sourceraft/storage"
)

// verifiedChunks remembers which chunks passed their checksum since the
// database was opened, so that repeated downloads of the same artifact can
// go from the page cache to the socket without being read in user space.
// Corruption is still caught on the first read after every start and
// restore; what it no longer catches is bytes changing underneath a
// running replica.
type verifiedChunks struct {
	mu  sync.Mutex
	set map[string]struct{}
}

func (v *verifiedChunks) key(upload []byte, seq uint32) string {
	return string(binary.BigEndian.AppendUint32(append([]byte(nil), upload...), seq))
}

func (v *verifiedChunks) has(upload []byte, seq uint32) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	_, ok := v.set[v.key(upload, seq)]
	return ok
}

func (v *verifiedChunks) add(upload []byte, seq uint32) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.set == nil {
		v.set = map[string]struct{}{}
	}
	v.set[v.key(upload, seq)] = struct{}{}
}

func (v *verifiedChunks) reset() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.set = nil
}

// maxSpan bounds what one read transaction sends, so that a slow client
// pins the pages of at most this many bytes at a time.
const maxSpan = 8 << 20

// sendTo writes the rest of the blob to rf over the database file itself:
// a TCP connection's ReadFrom turns that into sendfile, so chunk bytes
// never pass through user space. Chunks that lie back to back in the file
// go out in one call, inside the read transaction that keeps their pages
// from being reused while the kernel copies them.
func (b *Blob) sendTo(rf io.ReaderFrom) (int64, error) {
	var total int64
	for b.off < b.size {
		if b.starts == nil {
			if err := b.index(); err != nil {
				return total, err
			}
		}
		n, err := b.sendSpan(rf)
		b.off += n
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// sendSpan sends the verified chunks from b.off on that are contiguous in
// the file, up to maxSpan bytes; a chunk that is not file-backed (a small
// one bbolt copied to the heap) is written on its own.
func (b *Blob) sendSpan(rf io.ReaderFrom) (int64, error) {
	var sent int64
	err := b.f.view(func(tx *bolt.Tx) error {
		chunks := tx.Bucket(bucketChunks).Bucket(b.upload)
		if chunks == nil {
			return fmt.Errorf("blob %s is gone: %w", b.digest, storage.ErrNotFound)
		}
		base := tx.DB().Info().Data
		seq := b.chunkAt(b.off)
		skip := b.off - b.starts[seq]
		var spanOff, spanLen int64
		for ; seq < b.chunks && spanLen < maxSpan; seq++ {
			data, err := b.verifiedChunk(chunks, seq)
			if err != nil {
				if spanLen > 0 {
					break // send what is good; the next span starts with this error
				}
				return err
			}
			data = data[skip:]
			skip = 0
			if len(data) == 0 {
				continue
			}
			off := int64(uintptr(unsafe.Pointer(unsafe.SliceData(data))) - base)
			if off < 0 || off+int64(len(data)) > tx.Size() {
				if spanLen > 0 {
					break
				}
				w, ok := rf.(io.Writer)
				if !ok {
					return fmt.Errorf("blob %s chunk %d: not file-backed and %T cannot write", b.digest, seq, rf)
				}
				n, err := w.Write(data)
				sent = int64(n)
				return err
			}
			if spanLen > 0 && off != spanOff+spanLen {
				break
			}
			if spanLen == 0 {
				spanOff = off
			}
			spanLen += int64(len(data))
		}
		if spanLen == 0 {
			return b.corrupt(seq, "no content left before the blob's size")
		}
		file, err := b.dbFile()
		if err != nil {
			return err
		}
		if _, err := file.Seek(spanOff, io.SeekStart); err != nil {
			return fmt.Errorf("blob %s: seek database file: %w", b.digest, err)
		}
		sent, err = rf.ReadFrom(io.LimitReader(file, spanLen))
		if err == nil && sent != spanLen {
			err = fmt.Errorf("blob %s: sent %d of %d bytes: %w", b.digest, sent, spanLen, io.ErrShortWrite)
		}
		return err
	})
	return sent, err
}

// verifiedChunk returns chunk seq's content, checking its checksum the
// first time it is read since the database was opened.
func (b *Blob) verifiedChunk(chunks *bolt.Bucket, seq uint32) ([]byte, error) {
	v := getChunk(chunks, seq)
	if len(v) < 4 {
		return nil, b.corrupt(seq, fmt.Sprintf("stored as %d bytes", len(v)))
	}
	data := v[4:]
	if !b.f.verified.has(b.upload, seq) {
		if checksum(data) != binary.BigEndian.Uint32(v) {
			return nil, b.corrupt(seq, "checksum mismatch")
		}
		b.f.verified.add(b.upload, seq)
	}
	return data, nil
}

// dbFile returns this blob's handle on the database file, reopened when a
// restore has replaced the file since it was opened. Call it inside a read
// transaction, which holds off restores.
func (b *Blob) dbFile() (*os.File, error) {
	gen := b.f.generation.Load()
	if b.file != nil && b.fileGen == gen {
		return b.file, nil
	}
	if b.file != nil {
		b.file.Close()
	}
	file, err := os.Open(b.f.path)
	if err != nil {
		b.file = nil
		return nil, fmt.Errorf("blob %s: open database file: %w", b.digest, err)
	}
	b.file, b.fileGen = file, gen
	return file, nil
}
