package fsm

import (
	"bytes"
	"errors"
	"io"
	"os"
	"testing"

	"github.com/sourceraft/sourceraft/storage"
)

func remoteCommit(t testing.TB, path string, content []byte) []byte {
	t.Helper()
	return EncodeCommitRemote(RemoteCommit{Artifact: artifactAt(t, path, content)})
}

func wantPlace(t *testing.T, f *FSM, content []byte, want Place) {
	t.Helper()
	if got := f.BlobPlace(digestOf(content)); got != want {
		t.Fatalf("blob of %d bytes is at place %d, want %d", len(content), got, want)
	}
}

func wantRemoteContent(t *testing.T, f *FSM, path string) *Content {
	t.Helper()
	c, err := f.Open(mustKey(t, path))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Remote || c.File != nil || c.Data != nil {
		t.Fatalf("%s opened as remote=%v with file=%v data=%d bytes; want remote without bytes", path, c.Remote, c.File != nil, len(c.Data))
	}
	return c
}

func TestRemoteBlobs(t *testing.T) {
	content := pattern(1, SmallBlobSize+10)
	small := pattern(2, 300)

	t.Run("commit, share, release to garbage, forget", func(t *testing.T) {
		f := newFSM(t)
		fd := &feeder{f: f}
		fd.ok(t, remoteCommit(t, pathA, content), remoteCommit(t, pathB, content))
		wantPlace(t, f, content, Remote)
		wantRemoteContent(t, f, pathA).Close()
		if blobs, _ := files(t, f); blobs != 0 {
			t.Fatalf("%d blob files for remote content", blobs)
		}
		st, err := f.Stats()
		if err != nil || st.Blobs != 1 || st.RemoteBlobs != 1 || st.Artifacts != 2 || st.BlobBytes != int64(len(content)) {
			t.Fatalf("stats %+v, %v: want 2 artifacts sharing 1 remote blob", st, err)
		}
		fd.ok(t, EncodeDeleteArtifacts([]string{pathA}))
		wantPlace(t, f, content, Remote)
		fd.ok(t, EncodeDeleteArtifacts([]string{pathB}))
		wantPlace(t, f, content, Garbage)
		if g, err := f.GarbageBlobs(10); err != nil || len(g) != 1 || g[0] != digestOf(content) {
			t.Fatalf("garbage %v, %v", g, err)
		}
		// Committed again before the leader deleted it: no longer garbage.
		fd.ok(t, remoteCommit(t, pathA, content))
		wantPlace(t, f, content, Remote)
		fd.ok(t, EncodeDeleteArtifacts([]string{pathA}), EncodeForgetGarbage([]string{digestOf(content), digestOf(small)}))
		wantPlace(t, f, content, Unknown)
		if st, _ := f.Stats(); st.Blobs != 0 || st.RemoteBlobs != 0 || st.GarbageBlobs != 0 || st.BlobBytes != 0 {
			t.Fatalf("stats %+v after everything went", st)
		}
	})

	t.Run("move files to the object store", func(t *testing.T) {
		f := newFSM(t)
		fd := &feeder{f: f}
		fd.ok(t, storeCmds(t, "u1", pathA, content)...)
		opened, err := f.Open(mustKey(t, pathA))
		if err != nil || opened.File == nil {
			t.Fatalf("open local: %v", err)
		}
		defer opened.Close()
		fd.ok(t, EncodeMoveBlobs([]string{digestOf(content), digestOf(small)}))
		wantPlace(t, f, content, Remote)
		// A digest nobody names (released while it was copied) is garbage.
		wantPlace(t, f, small, Garbage)
		if blobs, _ := files(t, f); blobs != 0 {
			t.Fatalf("%d blob files left after the move", blobs)
		}
		wantRemoteContent(t, f, pathA).Close()
		// A download that had the file open reads it to its end.
		if got, err := io.ReadAll(opened.Reader()); err != nil || !bytes.Equal(got, content) {
			t.Fatalf("read of a moved file: %d bytes, %v", len(got), err)
		}
		// A second move changes nothing.
		before := contentHash(t, f)
		fd.ok(t, EncodeMoveBlobs([]string{digestOf(content)}))
		if contentHash(t, f) != before {
			t.Fatal("moving a remote blob again changed the state")
		}
	})

	t.Run("content in one place is referenced there", func(t *testing.T) {
		f := newFSM(t)
		fd := &feeder{f: f}
		fd.ok(t, storeCmds(t, "u1", pathA, content)...)
		fd.ok(t, remoteCommit(t, pathB, content))
		wantPlace(t, f, content, Local)
		fd.ok(t, remoteCommit(t, "helmchart/ns/c/1.tgz", small))
		fd.ok(t, storeCmds(t, "u2", "helmchart/ns/c/2.tgz", small)...)
		wantPlace(t, f, small, Remote)
		if blobs, uploads := files(t, f); blobs != 1 || uploads != 0 {
			t.Fatalf("%d blob files, %d upload files; want only the local blob's", blobs, uploads)
		}
		fd.ok(t, EncodeDeleteArtifacts([]string{pathA}))
		wantPlace(t, f, content, Local)
		fd.ok(t, EncodeDeleteArtifacts([]string{pathB}))
		wantPlace(t, f, content, Unknown)
		if blobs, _ := files(t, f); blobs != 0 {
			t.Fatalf("%d blob files after the last local reference went", blobs)
		}
	})

	t.Run("rejected commits change nothing", func(t *testing.T) {
		f := newFSM(t)
		fd := &feeder{f: f}
		fd.ok(t, remoteCommit(t, pathA, content))
		badDigest := artifactAt(t, pathB, content)
		badDigest.Digest = "sha256:XYZ"
		otherSize := artifactAt(t, pathB, content)
		otherSize.Size--
		badPath := artifactAt(t, pathB, content)
		badPath.Namespace = ".."
		before := contentHash(t, f)
		for name, tc := range map[string]struct {
			cmd  []byte
			want error
		}{
			"digest not sha256 hex": {EncodeCommitRemote(RemoteCommit{Artifact: badDigest}), ErrInvalidCommand},
			"size differs":          {EncodeCommitRemote(RemoteCommit{Artifact: otherSize}), storage.ErrDigestMismatch},
			"path":                  {EncodeCommitRemote(RemoteCommit{Artifact: badPath}), storage.ErrInvalidPath},
			"move of a non-digest":  {EncodeMoveBlobs([]string{"sha256:00"}), ErrInvalidCommand},
		} {
			res, _ := fd.apply(tc.cmd).(error)
			if !errors.Is(res, tc.want) {
				t.Errorf("%s: result %v, want %v", name, res, tc.want)
			}
		}
		if contentHash(t, f) != before {
			t.Fatal("a rejected command changed the state")
		}
	})

	t.Run("attach holds a small blob in memory", func(t *testing.T) {
		f := newFSM(t)
		(&feeder{f: f}).ok(t, remoteCommit(t, pathA, small))
		c := wantRemoteContent(t, f, pathA)
		fh := tempWith(t, small)
		if err := c.Attach(fh); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(c.Data, small) || c.File != nil || !c.Verified() {
			t.Fatalf("attached small blob: %d bytes in memory, file %v", len(c.Data), c.File != nil)
		}
		again, err := f.Open(mustKey(t, pathA))
		if err != nil || again.Remote || !bytes.Equal(again.Data, small) {
			t.Fatalf("second open: remote=%v, %v; want it from memory", again != nil && again.Remote, err)
		}
	})

	t.Run("snapshot and restore keep the records", func(t *testing.T) {
		src := newFSM(t)
		fd := &feeder{f: src}
		fd.ok(t, remoteCommit(t, pathA, content), remoteCommit(t, pathB, small), EncodeDeleteArtifacts([]string{pathB}))
		fd.ok(t, storeCmds(t, "u1", "helmchart/ns/c/1.tgz", small)...)
		snap, err := src.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		var sink memSink
		if err := snap.Persist(&sink); err != nil {
			t.Fatal(err)
		}
		snap.Release()
		dst := newFSM(t)
		if err := dst.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
			t.Fatal(err)
		}
		if contentHash(t, dst) != contentHash(t, src) {
			t.Fatal("restored state differs")
		}
		wantPlace(t, dst, content, Remote)
		wantPlace(t, dst, small, Local)
		wantRemoteContent(t, dst, pathA).Close()
	})
}

func tempWith(t *testing.T, content []byte) *os.File {
	t.Helper()
	fh, err := os.CreateTemp(t.TempDir(), "blob")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fh.Write(content); err != nil {
		t.Fatal(err)
	}
	if _, err := fh.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	return fh
}
