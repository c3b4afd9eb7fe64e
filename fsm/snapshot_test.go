package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/sourceraft/sourceraft/internal/filetest"
	"github.com/sourceraft/sourceraft/storage"
)

type memSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *memSink) ID() string    { return "test" }
func (s *memSink) Close() error  { s.closed = true; return nil }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }

func snapshotOf(t *testing.T, f *FSM) *memSink {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	if !sink.closed || sink.cancelled {
		t.Fatalf("sink closed %v, cancelled %v", sink.closed, sink.cancelled)
	}
	return &sink
}

func TestSnapshotRestore(t *testing.T) {
	src := newFSM(t)
	fd := &feeder{f: src}
	big := pattern(4, storage.MaxChunkSize+7)
	small := pattern(5, 100)
	fd.ok(t, storeCmds(t, "u1", pathA, big)...)
	fd.ok(t, storeCmds(t, "u2", pathB, small)...)
	fd.ok(t, chunkCmds("pending", small, 10)[:3]...)
	fd.ok(t, EncodeSetNode(Node{ID: "a", RaftAddr: "a:1"}))

	// The snapshot is the state when it was taken, not when persisted.
	snap, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	atSnap, indexAtSnap := contentHash(t, src), src.AppliedIndex()
	later := [][]byte{EncodeDeleteArtifacts([]string{pathA}), EncodeSetNode(Node{ID: "b"})}
	fd.ok(t, later...)
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()

	// Restore replaces whatever the destination had, and content opened
	// before the restore whose blob is gone stays readable to its end.
	dst := newFSM(t)
	gone := pattern(6, SmallBlobSize+50)
	(&feeder{f: dst}).ok(t, storeCmds(t, "other", "ocirepository/x/y/z.tar.gz", gone)...)
	stale, err := dst.Open(mustKey(t, "ocirepository/x/y/z.tar.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer stale.Close()
	changed := dst.Changed()
	if err := dst.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	default:
		t.Fatal("Changed not signalled by Restore")
	}
	if got := contentHash(t, dst); got != atSnap {
		t.Fatal("restored content differs from the snapshot")
	}
	if dst.AppliedIndex() != indexAtSnap {
		t.Fatalf("applied index %d after restore, want %d", dst.AppliedIndex(), indexAtSnap)
	}
	wantArtifact(t, dst, pathA, big)
	wantArtifact(t, dst, pathB, small)
	wantMissing(t, dst, "ocirepository/x/y/z.tar.gz")
	wantUploads(t, dst, Upload{ID: "pending", StartedAt: testTime.UnixNano(), Chunks: 3, Bytes: 30})
	if got, err := io.ReadAll(stale.Reader()); err != nil || !bytes.Equal(got, gone) {
		t.Fatalf("read of a blob gone by restore: %d bytes, %v", len(got), err)
	}
	if blobs, uploads := files(t, dst); blobs != 2 || uploads != 1 {
		t.Fatalf("%d blob files, %d upload files after restore; want 2 and 1", blobs, uploads)
	}

	// The restored replica carries on from the snapshot's index.
	fd2 := &feeder{f: dst, index: indexAtSnap}
	fd2.ok(t, later...)
	if contentHash(t, dst) != contentHash(t, src) {
		t.Fatal("replica restored and fed the later logs differs from the source")
	}
}

func TestRestoreRejectsGarbage(t *testing.T) {
	f := newFSM(t)
	fd := &feeder{f: f}
	fd.ok(t, storeCmds(t, "u1", pathA, pattern(1, 10))...)
	before := contentHash(t, f)
	for _, in := range []string{"", "not a bbolt file at all", strings.Repeat("\x00", 1<<16)} {
		if err := f.Restore(io.NopCloser(strings.NewReader(in))); err == nil {
			t.Fatalf("restore of %d garbage bytes succeeded", len(in))
		}
	}
	if contentHash(t, f) != before || f.AppliedIndex() != fd.index {
		t.Fatal("a failed restore changed the state")
	}
	fd.ok(t, EncodeSetNode(Node{ID: "still-writable"}))
}

func TestOpenRemovesInterruptedRestores(t *testing.T) {
	f := newFSM(t)
	stale := f.path + ".restore-123"
	if err := os.WriteFile(stale, []byte("half a snapshot"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	openAt(t, f.path)
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale restore file: %v", err)
	}
}

func TestRestartDoesNotApplyTwice(t *testing.T) {
	f := newFSM(t)
	fd := &feeder{f: f}
	var logs []*raft.Log
	for _, c := range append(storeCmds(t, "u1", pathA, pattern(1, 3000), 1000), storeCmds(t, "u2", pathB, pattern(2, 10))...) {
		logs = append(logs, fd.log(c))
	}
	for _, l := range logs {
		if res := f.Apply(l); res != nil {
			t.Fatal(res)
		}
	}
	want := contentHash(t, f)
	path := f.path
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	f = openAt(t, path)
	if f.AppliedIndex() != fd.index {
		t.Fatalf("applied index %d after reopen, want %d", f.AppliedIndex(), fd.index)
	}
	for _, l := range logs {
		if res := f.Apply(l); res != nil {
			t.Fatalf("re-applying log %d: %v", l.Index, res)
		}
	}
	for _, res := range f.ApplyBatch(logs) {
		if res != nil {
			t.Fatalf("re-applying a batch: %v", res)
		}
	}
	if contentHash(t, f) != want {
		t.Fatal("re-fed logs changed the state")
	}

	// A batch straddling the stored index applies only the new part.
	fd.f = f
	next := fd.log(EncodeDeleteArtifacts([]string{pathB}))
	res := f.ApplyBatch(append(logs[len(logs)-2:], next))
	if res[0] != nil || res[1] != nil || res[2] != nil || f.AppliedIndex() != next.Index {
		t.Fatalf("results %v, applied index %d", res, f.AppliedIndex())
	}
	wantMissing(t, f, pathB)
	wantArtifact(t, f, pathA, pattern(1, 3000))
}

// linkSink keeps files by hard link, as a SnapshotStore on the same volume
// does, and remembers where in the stream each one goes.
type linkSink struct {
	memSink
	dir   string
	links []linked
}

type linked struct {
	at   int
	path string
	size int64
}

func (s *linkSink) LinkFile(path string, size int64) error {
	kept := filepath.Join(s.dir, fmt.Sprint(len(s.links)))
	if err := os.Link(path, kept); err != nil {
		return err
	}
	s.links = append(s.links, linked{at: s.Len(), path: kept, size: size})
	return nil
}

// stream splices the linked files back in: what a reader of the stored
// snapshot gets.
func (s *linkSink) stream(t *testing.T) []byte {
	t.Helper()
	var out []byte
	prev := 0
	b := s.Bytes()
	for _, l := range s.links {
		out = append(out, b[prev:l.at]...)
		data, err := os.ReadFile(l.path)
		if err != nil || int64(len(data)) < l.size {
			t.Fatalf("linked file %s: %d bytes, %v; want at least %d", l.path, len(data), err, l.size)
		}
		out = append(out, data[:l.size]...)
		prev = l.at
	}
	return append(out, b[prev:]...)
}

// TestSnapshotLinksBlobFiles persists one snapshot to a sink that keeps
// files by link and one that takes bytes: spliced, the first is the
// second byte for byte, and neither breaks when the blobs are deleted,
// an upload is aborted and another one grows between Snapshot and Persist.
func TestSnapshotLinksBlobFiles(t *testing.T) {
	f := newFSM(t)
	fd := &feeder{f: f}
	fd.ok(t, storeCmds(t, "u1", pathA, pattern(1, 3*storage.MaxChunkSize+5))...)
	fd.ok(t, storeCmds(t, "u2", pathB, pattern(2, 10))...)
	fd.ok(t, chunkCmds("pending", pattern(3, 3000), 1000)[:2]...)
	growing := chunkCmds("growing", pattern(4, 3000), 1000)
	fd.ok(t, growing[0])
	want := contentHash(t, f)
	snaps := make([]raft.FSMSnapshot, 2)
	for i := range snaps {
		s, err := f.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		snaps[i] = s
	}
	// The blobs go, and their files with them, before Persist runs.
	fd.ok(t, EncodeDeleteArtifacts([]string{pathA, pathB}), EncodeAbortUploads([]string{"pending"}))
	fd.ok(t, growing[1:]...)
	if blobs, uploads := files(t, f); blobs != 0 || uploads != 1 {
		t.Fatalf("%d blob and %d upload files after deleting all but the growing upload", blobs, uploads)
	}
	ls := &linkSink{dir: t.TempDir()}
	if err := snaps[0].Persist(ls); err != nil {
		t.Fatal(err)
	}
	var inline memSink
	if err := snaps[1].Persist(&inline); err != nil {
		t.Fatal(err)
	}
	if len(ls.links) != 4 {
		t.Fatalf("%d files linked, want the 2 blobs and the 2 uploads", len(ls.links))
	}
	if !bytes.Equal(ls.stream(t), inline.Bytes()) {
		t.Fatal("linked snapshot differs from the inline one")
	}
	if entries, _ := filepath.Glob(filepath.Join(f.dirs.root, pinPrefix+"*")); len(entries) != 0 {
		t.Fatalf("pins left after Persist: %v", entries)
	}
	dst := newFSM(t)
	if err := dst.Restore(io.NopCloser(bytes.NewReader(ls.stream(t)))); err != nil {
		t.Fatal(err)
	}
	if contentHash(t, dst) != want {
		t.Fatal("restored state differs from the snapshot's")
	}
	wantArtifact(t, dst, pathA, pattern(1, 3*storage.MaxChunkSize+5))
}

// TestRestoreRefusesDamagedLinkedBlob: a snapshot store checks a linked
// blob file for its size only, so the restore's own sha256 check is what
// refuses one whose bytes changed on disk; the state is left as it was.
func TestRestoreRefusesDamagedLinkedBlob(t *testing.T) {
	f := newFSM(t)
	(&feeder{f: f}).ok(t, storeCmds(t, "u1", pathA, pattern(1, 2*storage.MaxChunkSize+7))...)
	s, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	ls := &linkSink{dir: t.TempDir()}
	if err := s.Persist(ls); err != nil {
		t.Fatal(err)
	}
	if len(ls.links) != 1 {
		t.Fatalf("%d files linked, want 1", len(ls.links))
	}
	filetest.FlipByte(t, ls.links[0].path, storage.MaxChunkSize+3)

	dst := newFSM(t)
	(&feeder{f: dst}).ok(t, storeCmds(t, "v1", pathB, pattern(2, 100))...)
	before := contentHash(t, dst)
	err = dst.Restore(io.NopCloser(bytes.NewReader(ls.stream(t))))
	if err == nil || !strings.Contains(err.Error(), "hashes to") {
		t.Fatalf("restore of a snapshot with a damaged linked blob: %v, want a digest mismatch", err)
	}
	if contentHash(t, dst) != before {
		t.Fatal("a refused restore changed the state")
	}
	wantArtifact(t, dst, pathB, pattern(2, 100))
}

// TestRestoreKeepsGoodBlobFiles restores onto a replica that holds one of
// the snapshot's blobs intact, one with the right size but wrong bytes,
// and one the snapshot does not have.
func TestRestoreKeepsGoodBlobFiles(t *testing.T) {
	kept, bad, missing := pattern(1, 200<<10), pattern(2, 100<<10), pattern(3, 5000)
	src := newFSM(t)
	fd := &feeder{f: src}
	fd.ok(t, storeCmds(t, "u1", pathA, kept)...)
	fd.ok(t, storeCmds(t, "u2", pathB, bad)...)
	fd.ok(t, storeCmds(t, "u3", "helmchart/default/x/x-1.0.0.tgz", missing)...)
	snap := snapshotOf(t, src)

	dst := newFSM(t)
	dfd := &feeder{f: dst}
	dfd.ok(t, storeCmds(t, "v1", "ocirepository/a/b/kept.tar.gz", kept)...)
	dfd.ok(t, storeCmds(t, "v2", "ocirepository/a/b/bad.tar.gz", bad)...)
	dfd.ok(t, storeCmds(t, "v3", "ocirepository/a/b/other.tar.gz", pattern(4, 100))...)
	damage(t, dst, bad, 1000)
	keptBefore, err := os.Stat(dst.dirs.blob(digestOf(kept)))
	if err != nil {
		t.Fatal(err)
	}
	badBefore, err := os.Stat(dst.dirs.blob(digestOf(bad)))
	if err != nil {
		t.Fatal(err)
	}
	if err := dst.Restore(io.NopCloser(bytes.NewReader(snap.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if contentHash(t, dst) != contentHash(t, src) {
		t.Fatal("restored state differs from the source")
	}
	checkInvariants(t, dst)
	keptAfter, _ := os.Stat(dst.dirs.blob(digestOf(kept)))
	badAfter, _ := os.Stat(dst.dirs.blob(digestOf(bad)))
	if !os.SameFile(keptBefore, keptAfter) {
		t.Error("an intact blob file was written again")
	}
	if os.SameFile(badBefore, badAfter) {
		t.Error("a blob file with the wrong bytes was kept")
	}
	for _, d := range [][]byte{kept, bad, missing} {
		if err := dst.Verify(digestOf(d)); err != nil {
			t.Error(err)
		}
	}
	if _, err := os.Stat(dst.dirs.blob(digestOf(pattern(4, 100)))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("blob the snapshot does not reference: %v", err)
	}
}

func TestRestoreRejectsTruncatedSnapshot(t *testing.T) {
	src := newFSM(t)
	(&feeder{f: src}).ok(t, storeCmds(t, "u1", pathA, pattern(1, 50<<10))...)
	snap := snapshotOf(t, src).Bytes()
	f := newFSM(t)
	fd := &feeder{f: f}
	fd.ok(t, storeCmds(t, "u1", pathB, pattern(2, 10))...)
	before := contentHash(t, f)
	for _, cut := range []int{len(snap) - 1, len(snap) - 17, len(snap) - 10<<10} {
		if err := f.Restore(io.NopCloser(bytes.NewReader(snap[:cut]))); err == nil {
			t.Fatalf("restore of a snapshot cut at %d of %d bytes succeeded", cut, len(snap))
		}
	}
	if contentHash(t, f) != before {
		t.Fatal("a failed restore changed the state")
	}
}

// A damaged database page must be refused by its digest, before bbolt
// reads it: bbolt trusts its pages and may fault on a bad one.
func TestRestoreRejectsDamagedDatabase(t *testing.T) {
	src := newFSM(t)
	(&feeder{f: src}).ok(t, storeCmds(t, "u1", pathA, pattern(1, 50<<10))...)
	snap := snapshotOf(t, src).Bytes()
	dbStart := len(snapshotMagic) + 8 + 1 + 8
	f := newFSM(t)
	fd := &feeder{f: f}
	fd.ok(t, storeCmds(t, "u1", pathB, pattern(2, 10))...)
	before := contentHash(t, f)
	for _, at := range []int{dbStart + 16, dbStart + 5000, dbStart + 12000} {
		damaged := bytes.Clone(snap)
		damaged[at] ^= 0x40
		err := f.Restore(io.NopCloser(bytes.NewReader(damaged)))
		if err == nil || !strings.Contains(err.Error(), "sha256") {
			t.Fatalf("restore with byte %d of the database flipped: %v, want a digest mismatch", at-dbStart, err)
		}
	}
	if contentHash(t, f) != before {
		t.Fatal("a refused restore changed the state")
	}
	fd.ok(t, EncodeSetNode(Node{ID: "still-writable"}))
}
