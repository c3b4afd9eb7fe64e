package fsm

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/sourceraft/sourceraft/internal/filetest"
	"github.com/sourceraft/sourceraft/storage"
)

func TestOpenServesFileOrMemory(t *testing.T) {
	f := newFSM(t)
	fd := &feeder{f: f}
	small := pattern(7, SmallBlobSize)
	big := pattern(8, SmallBlobSize+1)
	fd.ok(t, storeCmds(t, "u1", pathA, small, 700, 1, 0, 2048)...)
	fd.ok(t, storeCmds(t, "u2", pathB, big, 4096)...)

	// A small blob is read, verified and then held in memory.
	c, err := f.Open(mustKey(t, pathA))
	if err != nil {
		t.Fatal(err)
	}
	if c.File != nil || !bytes.Equal(c.Data, small) || !c.Verified() {
		t.Fatalf("small blob: file %v, %d bytes in memory, verified %v", c.File != nil, len(c.Data), c.Verified())
	}
	c.Close()
	// A big one is an open file, not verified until a download checks it.
	c, err = f.Open(mustKey(t, pathB))
	if err != nil {
		t.Fatal(err)
	}
	if c.File == nil || c.Verified() || c.Size() != int64(len(big)) {
		t.Fatalf("big blob: file %v, verified %v, size %d", c.File != nil, c.Verified(), c.Size())
	}
	got, err := io.ReadAll(c.File)
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("big blob: %d bytes, %v", len(got), err)
	}
	sum, _, _ := readerDigest(bytes.NewReader(got))
	if err := c.Check(sum); err != nil || !c.Verified() {
		t.Fatalf("Check: %v", err)
	}
	c.Close()
	c, err = f.Open(mustKey(t, pathB))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.Verified() {
		t.Fatal("a verified blob is verified again on its next download")
	}
	if st := f.Integrity(); st.Verified != 2 || st.Corrupt != 0 {
		t.Fatalf("integrity %+v", st)
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

// damage flips a byte of the blob file of content.
func damage(t *testing.T, f *FSM, content []byte, off int64) {
	t.Helper()
	filetest.FlipByte(t, f.dirs.blob(digestOf(content)), off)
}

func TestCorruptBlobFile(t *testing.T) {
	f := newFSM(t)
	fd := &feeder{f: f}
	small := pattern(9, 3000)
	big := pattern(10, SmallBlobSize*3)
	fd.ok(t, storeCmds(t, "u1", pathA, small, 1000)...)
	fd.ok(t, storeCmds(t, "u2", pathB, big)...)
	damage(t, f, small, 1500)
	damage(t, f, big, 100)
	var reported []string
	f.OnCorrupt(func(d string) { reported = append(reported, d) })

	// The small one is checked before anything is returned.
	if _, err := f.Open(mustKey(t, pathA)); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("Open of a corrupt small blob: %v", err)
	}
	// The big one through the hash of what was read.
	c, err := f.Open(mustKey(t, pathB))
	if err != nil {
		t.Fatal(err)
	}
	sum, _, _ := readerDigest(c.File)
	if err := c.Check(sum); !errors.Is(err, storage.ErrCorrupt) || c.Verified() {
		t.Fatalf("Check of a corrupt file: %v", err)
	}
	c.Close()
	if err := f.Verify(digestOf(big)); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("Verify: %v", err)
	}
	if want := []string{digestOf(small), digestOf(big), digestOf(big)}; !equalStrings(reported, want) {
		t.Fatalf("reported %v, want %v", reported, want)
	}

	// A repair must hash right; then the blob serves again.
	if err := f.Repair(digestOf(big), int64(len(big)), bytes.NewReader(small)); err == nil {
		t.Fatal("repair with the wrong bytes succeeded")
	}
	if err := f.Repair(digestOf(big), int64(len(big)), bytes.NewReader(big)); err != nil {
		t.Fatal(err)
	}
	if err := f.Repair(digestOf(small), int64(len(small)), bytes.NewReader(small)); err != nil {
		t.Fatal(err)
	}
	wantArtifact(t, f, pathA, small)
	wantArtifact(t, f, pathB, big)
	if err := f.Verify(digestOf(big)); err != nil {
		t.Fatal(err)
	}
	if st := f.Integrity(); st.Corrupt != 3 || st.Repaired != 2 {
		t.Fatalf("integrity %+v", st)
	}
	// No repair brings back a blob nothing references.
	fd.ok(t, EncodeDeleteArtifacts([]string{pathA}))
	if err := f.Repair(digestOf(small), int64(len(small)), bytes.NewReader(small)); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("repair of a deleted blob: %v", err)
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestArtifactLookupsFollowChanges reads an artifact through the cache of
// decoded records between every kind of change: a new version of it, a
// delete, a restore; each lookup sees the change, and a caller that
// changes what it got does not change what the next one gets.
func TestArtifactLookupsFollowChanges(t *testing.T) {
	f := newFSM(t)
	fd := &feeder{f: f}
	fd.ok(t, storeCmds(t, "u1", pathA, pattern(1, 100))...)
	for range 2 {
		wantArtifact(t, f, pathA, pattern(1, 100))
	}
	a, err := f.Artifact(mustKey(t, pathA))
	if err != nil {
		t.Fatal(err)
	}
	a.Digest = "changed by a caller"
	wantArtifact(t, f, pathA, pattern(1, 100))

	fd.ok(t, storeCmds(t, "u2", pathA, pattern(2, 200))...)
	wantArtifact(t, f, pathA, pattern(2, 200))
	fd.ok(t, EncodeDeleteArtifacts([]string{pathA}))
	wantMissing(t, f, pathA)
	fd.ok(t, storeCmds(t, "u3", pathA, pattern(3, 300))...)
	wantArtifact(t, f, pathA, pattern(3, 300))

	src := newFSM(t)
	(&feeder{f: src}).ok(t, storeCmds(t, "v1", pathA, pattern(4, 400))...)
	if err := f.Restore(io.NopCloser(bytes.NewReader(snapshotOf(t, src).Bytes()))); err != nil {
		t.Fatal(err)
	}
	wantArtifact(t, f, pathA, pattern(4, 400))
}
