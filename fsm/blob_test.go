package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/sourceraft/sourceraft/storage"
	bolt "go.etcd.io/bbolt"
)

func TestBlobSeekRead(t *testing.T) {
	f := newFSM(t)
	// Uneven chunks, an empty one among them, so reads cross boundaries
	// at odd offsets.
	content := pattern(7, 20_000)
	(&feeder{f: f}).ok(t, storeCmds(t, "u1", pathA, content, 700, 1, 0, 2048, 333, 4096)...)

	b, err := f.OpenBlob(digestOf(content))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Size() != int64(len(content)) {
		t.Fatalf("size %d", b.Size())
	}
	ref := bytes.NewReader(content)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		var off int64
		whence := rng.IntN(3)
		switch whence {
		case io.SeekStart:
			off = rng.Int64N(int64(len(content)) + 10)
		case io.SeekCurrent:
			off = rng.Int64N(3000) - 1500
		case io.SeekEnd:
			off = -rng.Int64N(int64(len(content)))
		}
		want, wantErr := ref.Seek(off, whence)
		got, err := b.Seek(off, whence)
		if (err != nil) != (wantErr != nil) || err == nil && got != want {
			t.Fatalf("op %d: Seek(%d, %d) = %d, %v; want %d, %v", i, off, whence, got, err, want, wantErr)
		}
		if err != nil {
			continue
		}
		n := rng.IntN(6000)
		wantBuf, gotBuf := make([]byte, n), make([]byte, n)
		wn, _ := io.ReadFull(ref, wantBuf)
		gn, _ := io.ReadFull(b, gotBuf)
		if gn != wn || !bytes.Equal(gotBuf[:gn], wantBuf[:wn]) {
			t.Fatalf("op %d: read %d bytes at %d, want %d equal bytes", i, gn, want, wn)
		}
	}

	// WriteTo from the middle of a chunk writes the rest in order.
	if _, err := b.Seek(1234, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	n, err := b.WriteTo(&out)
	if err != nil || n != int64(len(content)-1234) || !bytes.Equal(out.Bytes(), content[1234:]) {
		t.Fatalf("WriteTo from 1234: %d bytes, %v", n, err)
	}
	if n, err := b.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("read at end: %d, %v", n, err)
	}
	if _, err := b.Seek(-1, io.SeekStart); err == nil {
		t.Fatal("seek to a negative offset succeeded")
	}
}

// countingWriter records the size of every Write call.
type countingWriter struct{ writes []int }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes = append(w.writes, len(p))
	return len(p), nil
}

func TestBlobWritesWholeChunks(t *testing.T) {
	f := newFSM(t)
	content := pattern(8, 2*storage.MaxChunkSize+5)
	(&feeder{f: f}).ok(t, storeCmds(t, "u1", pathA, content)...)
	b, err := f.OpenBlob(digestOf(content))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var w countingWriter
	if _, err := b.WriteTo(&w); err != nil {
		t.Fatal(err)
	}
	if want := []int{storage.MaxChunkSize, storage.MaxChunkSize, 5}; fmt.Sprint(w.writes) != fmt.Sprint(want) {
		t.Fatalf("writes %v, want %v", w.writes, want)
	}
}

func TestEmptyBlob(t *testing.T) {
	f := newFSM(t)
	(&feeder{f: f}).ok(t, storeCmds(t, "u1", pathA, nil)...)
	wantArtifact(t, f, pathA, nil)
	if err := f.Verify(digestOf(nil)); err != nil {
		t.Fatal(err)
	}
}

// damage rewrites chunk seq of upload id in the closed database at path.
func damage(t *testing.T, path, id string, seq uint32, fn func(v []byte) []byte) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketChunks).Bucket([]byte(id)).Bucket(seqKey(seq))
		v := append([]byte(nil), b.Get(keyChunk)...)
		return b.Put(keyChunk, fn(v))
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestCorruptChunk(t *testing.T) {
	f := newFSM(t)
	content := pattern(9, 3000)
	(&feeder{f: f}).ok(t, storeCmds(t, "u1", pathA, content, 1000)...)
	path := f.path
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	damage(t, path, "u1", 1, func(v []byte) []byte { v[4+10] ^= 0x01; return v })
	f = openAt(t, path)
	digest := digestOf(content)

	b, err := f.OpenBlob(digest)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	first := make([]byte, 1000)
	if _, err := io.ReadFull(b, first); err != nil || !bytes.Equal(first, content[:1000]) {
		t.Fatalf("intact first chunk: %v", err)
	}
	p := make([]byte, 100)
	if n, err := b.Read(p); n != 0 || !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("read of the damaged chunk: %d bytes, %v", n, err)
	}
	// The chunk after it is still served.
	if _, err := b.Seek(2500, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(b, p); err != nil || !bytes.Equal(p, content[2500:2600]) {
		t.Fatalf("intact last chunk: %v", err)
	}

	b2, err := f.OpenBlob(digest)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	var out bytes.Buffer
	if n, err := b2.WriteTo(&out); n != 1000 || !errors.Is(err, storage.ErrCorrupt) || !bytes.Equal(out.Bytes(), content[:1000]) {
		t.Fatalf("WriteTo: %d bytes, %v; want the first chunk only, then corruption", n, err)
	}
	if err := f.Verify(digest); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("Verify: %v", err)
	}
}

func TestVerifyDetectsReplacedContent(t *testing.T) {
	f := newFSM(t)
	content := pattern(10, 3000)
	(&feeder{f: f}).ok(t, storeCmds(t, "u1", pathA, content, 1000)...)
	path := f.path
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// Different bytes with a valid checksum: only the digest can tell.
	damage(t, path, "u1", 2, func(v []byte) []byte {
		data := bytes.Repeat([]byte{'x'}, len(v)-4)
		return append(seqKey(checksum(data)), data...)
	})
	f = openAt(t, path)
	if err := f.Verify(digestOf(content)); !errors.Is(err, storage.ErrDigestMismatch) {
		t.Fatalf("Verify: %v", err)
	}
}
