package fsm

import (
	"bytes"
	"io"
	"testing"

	"github.com/sourceraft/sourceraft/storage"
)

// FuzzRestore restores corrupted and truncated snapshot streams: a stream
// that is refused leaves the state as it was and the FSM writable; one
// that is taken leaves a consistent store whose every artifact opens.
func FuzzRestore(f *testing.F) {
	src := newFSM(f)
	sfd := &feeder{f: src}
	sfd.ok(f, storeCmds(f, "u1", pathA, pattern(1, 3000), 1000)...)
	sfd.ok(f, storeCmds(f, "u2", "bucket/default/b/b.tar.gz", pattern(2, 70<<10), 16<<10)...)
	snap, err := src.Snapshot()
	if err != nil {
		f.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		f.Fatal(err)
	}
	snap.Release()
	good := sink.Bytes()
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add(good[:len(good)-1])
	flipped := bytes.Clone(good)
	flipped[len(flipped)-100] ^= 0xff
	f.Add(flipped)
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, data []byte) {
		dst := newFSM(t)
		fd := &feeder{f: dst}
		fd.ok(t, storeCmds(t, "x", pathB, pattern(9, 100))...)
		before := contentHash(t, dst)
		if err := dst.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
			if contentHash(t, dst) != before {
				t.Fatalf("a refused restore (%v) changed the state", err)
			}
			fd.ok(t, EncodeSetNode(Node{ID: "still-writable"}))
			return
		}
		checkInvariants(t, dst)
		arts, err := dst.List(storage.Filter{})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range arts {
			if err := dst.Verify(a.Digest); err != nil {
				t.Fatalf("restored artifact %s: %v", a.Path(), err)
			}
		}
	})
}
