package fsm

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sourceraft/sourceraft/storage"
	bolt "go.etcd.io/bbolt"
)

// fixtureAt is the leader clock of the commands behind testdata/layout2.db.gz.
var fixtureAt = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

// fixtureCmds are the 32 commands that made testdata/layout2.db.gz: the
// release before layout 3 (commit 8e611c9, blobs in the chunks bucket)
// applied them at indexes 1..32 with its own fsm package, and the file
// was then compacted with bbolt.Compact, which keeps every key and value.
func fixtureCmds(t *testing.T) [][]byte {
	t.Helper()
	var cmds [][]byte
	chunks := func(id string, content []byte, size int) uint32 {
		var seq uint32
		for off := 0; off < len(content) || seq == 0; seq++ {
			n := min(size, len(content)-off)
			cmds = append(cmds, EncodeChunk(Chunk{UploadID: id, Seq: seq, StartedAt: fixtureAt.UnixNano(), Data: content[off : off+n]}))
			off += n
		}
		return seq
	}
	store := func(id, path string, content []byte, size int) {
		n := chunks(id, content, size)
		a := artifactAt(t, path, content)
		a.LastUpdateTime = fixtureAt
		cmds = append(cmds, EncodeCommit(Commit{UploadID: id, Chunks: n, Artifact: a}))
	}
	store("u1", "gitrepository/default/podinfo/abc.tar.gz", pattern(1, 3000), 1000)
	store("u2", "gitrepository/default/podinfo/def.tar.gz", pattern(2, 300<<10), 64<<10)
	store("u3", "helmchart/default/podinfo/podinfo-6.5.0.tgz", pattern(1, 3000), 700)
	store("u4", "ocirepository/team-a/app/empty.tar.gz", nil, 1000)
	store("u5", "bucket/team-a/app/gone.tar.gz", pattern(5, 5000), 4096)
	cmds = append(cmds, EncodeDeleteArtifacts([]string{"bucket/team-a/app/gone.tar.gz"}))
	store("u6", "gitrepository/default/podinfo/abc.tar.gz", pattern(6, 70<<10), 16<<10)
	chunks("pending", pattern(7, 2500), 1000)
	cmds = append(cmds, EncodeSetNode(Node{ID: "replica-0", RaftAddr: "10.0.0.1:7000", APIAddr: "10.0.0.1:9091", StorageAddr: "10.0.0.1:9090"}))
	if len(cmds) != 32 {
		t.Fatalf("%d fixture commands, want 32", len(cmds))
	}
	return cmds
}

// layout2Store unpacks the fixture into a fresh directory.
func layout2Store(t *testing.T) string {
	t.Helper()
	in, err := os.Open("testdata/layout2.db.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	zr, err := gzip.NewReader(in)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "fsm.db")
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, zr); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// checkMigrated compares a migrated store with one that applied the same
// commands in layout 3 from the start, then carries on with both.
func checkMigrated(t *testing.T, path string) {
	t.Helper()
	cmds := fixtureCmds(t)
	fresh := newFSM(t)
	ffd := &feeder{f: fresh}
	ffd.ok(t, cmds...)

	rebuildCurrent(t, fresh)

	f := openAt(t, path)
	if f.AppliedIndex() != 32 {
		t.Fatalf("applied index %d after migration, want 32", f.AppliedIndex())
	}
	// All three podinfo artifacts carry fixtureAt: the tie goes to the
	// greater path, not to abc.tar.gz, which was committed last.
	if a, err := f.Artifact(mustKey(t, "gitrepository/default/podinfo/latest.tar.gz")); err != nil || a.File != "def.tar.gz" {
		t.Fatalf("podinfo's alias after migration: %+v, %v; want def.tar.gz", a, err)
	}
	if got, want := contentHash(t, f), contentHash(t, fresh); got != want {
		t.Fatalf("migrated content hash %s, a layout 3 store of the same log has %s", got, want)
	}
	checkInvariants(t, f)
	for _, a := range []struct {
		path    string
		content []byte
	}{
		{"gitrepository/default/podinfo/abc.tar.gz", pattern(6, 70<<10)},
		{"gitrepository/default/podinfo/def.tar.gz", pattern(2, 300<<10)},
		{"helmchart/default/podinfo/podinfo-6.5.0.tgz", pattern(1, 3000)},
		{"ocirepository/team-a/app/empty.tar.gz", nil},
	} {
		c, err := f.Open(mustKey(t, a.path))
		if err != nil {
			t.Fatal(err)
		}
		if c.Artifact.Digest != digestOf(a.content) || !c.Artifact.LastUpdateTime.Equal(fixtureAt) {
			t.Fatalf("%s: %+v", a.path, c.Artifact)
		}
		c.Close()
		if err := f.Verify(c.Artifact.Digest); err != nil {
			t.Fatal(err)
		}
	}
	st, err := f.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if want := (Stats{Artifacts: 4, Bytes: 70<<10 + 300<<10 + 3000, Blobs: 4, BlobBytes: 70<<10 + 300<<10 + 3000, Uploads: 1, AppliedIndex: 32}); st != want {
		t.Fatalf("stats %+v, want %+v", st, want)
	}
	err = f.view(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketChunks) != nil {
			t.Error("the chunks bucket survived the migration")
		}
		if l, err := readLayout(tx); err != nil || l != layoutVersion {
			t.Errorf("layout %d, %v", l, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// The upload in flight carries on and commits on both.
	more := EncodeChunk(Chunk{UploadID: "pending", Seq: 3, StartedAt: fixtureAt.UnixNano(), Data: pattern(8, 10)})
	done := artifactAt(t, "gitrepository/default/late/x.tar.gz", append(pattern(7, 2500), pattern(8, 10)...))
	commit := EncodeCommit(Commit{UploadID: "pending", Chunks: 4, Artifact: done})
	fd := &feeder{f: f, index: 32}
	fd.ok(t, more, commit)
	ffd.ok(t, more, commit)
	if contentHash(t, f) != contentHash(t, fresh) {
		t.Fatal("migrated store and layout 3 store differ after the same new commands")
	}
	wantArtifact(t, f, "gitrepository/default/late/x.tar.gz", append(pattern(7, 2500), pattern(8, 10)...))
}

func TestMigrateLayout2(t *testing.T) {
	path := layout2Store(t)
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	checkMigrated(t, path)
	after, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// The chunks' pages are not kept: the database holds metadata only.
	if after.Size() >= before.Size()/2 {
		t.Fatalf("database of %d bytes after migrating, %d before", after.Size(), before.Size())
	}
}

// TestMigrationResumes stops a migration after its first blob, as a crash
// would, and lets the next Open finish it.
func TestMigrationResumes(t *testing.T) {
	path := layout2Store(t)
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	dirs := newBlobDirs(path)
	if err := dirs.create(); err != nil {
		t.Fatal(err)
	}
	digest, rec, ok, err := nextV2Blob(db)
	if err != nil || !ok {
		t.Fatalf("no layout 2 blob: %v", err)
	}
	if err := migrateBlob(db, dirs, digest, rec, true); err != nil {
		t.Fatal(err)
	}
	// And a second blob's file written but its record not yet updated.
	digest2, rec2, ok, err := nextV2Blob(db)
	if err != nil || !ok || digest2 == digest {
		t.Fatalf("next layout 2 blob: %s, %v", digest2, err)
	}
	if err := db.View(func(tx *bolt.Tx) error {
		fh, err := os.Create(dirs.blob(digest2))
		if err != nil {
			return err
		}
		defer fh.Close()
		_, err = writeChunks(tx, rec2.Upload, rec2.Chunks, fh)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	checkMigrated(t, path)
}

// TestMigrationGivesBackChunkPages: migrating one blob frees its chunks'
// disk blocks at once, so the store never needs room for two copies.
func TestMigrationGivesBackChunkPages(t *testing.T) {
	path := layout2Store(t)
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	dirs := newBlobDirs(path)
	if err := dirs.create(); err != nil {
		t.Fatal(err)
	}
	allocated := func() int64 {
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		return st.Blocks * 512
	}
	before := allocated()
	var rec v2BlobRecord
	digest := digestOf(pattern(2, 300<<10)) // u2: five 64 KiB chunks and more
	err = db.View(func(tx *bolt.Tx) error {
		r, ok := decodeV2BlobRecord(tx.Bucket(bucketBlobs).Get([]byte(digest)))
		if !ok {
			return errors.New("no layout 2 record")
		}
		rec = r
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := migrateBlob(db, dirs, digest, rec, true); err != nil {
		t.Fatal(err)
	}
	if freed := before - allocated(); freed < 250<<10 {
		t.Fatalf("migrating a 300 KiB blob gave back %d bytes of the database's blocks", freed)
	}
}

// TestMigrationRefusesCorruptChunks leaves the store as it was when a
// chunk fails its checksum: nothing is lost, the error says why.
func TestMigrationRefusesCorruptChunks(t *testing.T) {
	path := layout2Store(t)
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketChunks).Bucket([]byte("u2")).Bucket(seqKey(1))
		v := append([]byte(nil), b.Get(keyChunk)...)
		v[10] ^= 0xff
		return b.Put(keyChunk, v)
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := Open(path, Options{NoSync: true}); err == nil {
		t.Fatal("migrated a store with a corrupt chunk")
	} else if !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("open: %v", err)
	}
}

// TestRestoreOfLayout2Snapshot restores what a replica of the previous
// release sends as a snapshot (its bbolt file, blobs inside) and migrates
// it, as in a rolling upgrade.
func TestRestoreOfLayout2Snapshot(t *testing.T) {
	old, err := os.ReadFile(layout2Store(t))
	if err != nil {
		t.Fatal(err)
	}
	f := newFSM(t)
	(&feeder{f: f}).ok(t, storeCmds(t, "x", pathA, pattern(9, 100))...)
	if err := f.Restore(io.NopCloser(bytes.NewReader(old))); err != nil {
		t.Fatal(err)
	}
	fresh := newFSM(t)
	(&feeder{f: fresh}).ok(t, fixtureCmds(t)...)
	rebuildCurrent(t, fresh)
	if f.AppliedIndex() != 32 || contentHash(t, f) != contentHash(t, fresh) {
		t.Fatalf("restored layout 2 snapshot: applied %d, hash differs from a layout 3 store of the same log", f.AppliedIndex())
	}
	checkInvariants(t, f)
}

// rebuildCurrent fills f's current bucket as a store written before the
// bucket existed gets it: by each object's newest LastUpdateTime, then
// path, since the order of its commits is no longer known. A layout 3
// store of the same log differs from a migrated one only where that rule
// and the commit order disagree; compare everything else.
func rebuildCurrent(t *testing.T, f *FSM) {
	t.Helper()
	err := f.update(func(a *applyCtx) error {
		if err := a.tx.DeleteBucket(bucketCurrent); err != nil {
			return err
		}
		return ensureCurrent(a.tx)
	})
	if err != nil {
		t.Fatal(err)
	}
}
