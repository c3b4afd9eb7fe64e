package raftstore

import (
	"bytes"
	"errors"
	"testing"
	"time"

	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/types"
)

// TestReleasedSegmentReadsAndRefusesAppends fills a segment until it
// seals: its entries still read, through the reader it switched to, and
// an append fails as raft-wal's own sealed writer's does, which is what a
// full disk leads to (the rotation fails and the sealed segment stays the
// tail; this one panicked in TestDiskFullReplica).
func TestReleasedSegmentReadsAndRefusesAppends(t *testing.T) {
	f := newReleasingFiler(t.TempDir())
	w, err := f.Create(types.SegmentInfo{ID: 1, BaseIndex: 1, MinIndex: 1, SizeLimit: 64 << 10, Codec: wal.CodecBinaryV1, CreateTime: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	entry := func(i uint64) []byte { return bytes.Repeat([]byte{byte(i)}, 4<<10) }
	var last uint64
	for sealed := false; !sealed; {
		if last > 100 {
			t.Fatal("the segment never sealed")
		}
		last++
		if err := w.Append([]types.LogEntry{{Index: last, Data: entry(last)}}); err != nil {
			t.Fatal(err)
		}
		if sealed, _, err = w.Sealed(); err != nil {
			t.Fatal(err)
		}
	}
	if rw := w.(*releasingWriter); rw.w != nil || rw.r == nil {
		t.Fatal("the sealed segment still reads through its writer")
	}
	for i := uint64(1); i <= last; i++ {
		buf, err := w.GetLog(i)
		if err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		if !bytes.Equal(buf.Bs, entry(i)) {
			t.Fatalf("entry %d: %d bytes that are not its own", i, len(buf.Bs))
		}
		buf.Close()
	}
	if w.LastIndex() != last {
		t.Fatalf("last index %d, want %d", w.LastIndex(), last)
	}
	if err := w.Append([]types.LogEntry{{Index: last + 1, Data: entry(last + 1)}}); !errors.Is(err, types.ErrSealed) {
		t.Fatalf("append to a sealed segment: %v, want %v", err, types.ErrSealed)
	}
}
