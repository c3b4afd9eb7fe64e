package fsm

import (
	"bytes"
	"errors"
	"io"
	"os"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/sourceraft/sourceraft/storage"
)

const pathC = "gitrepository/default/podinfo/ghi.tar.gz"

// artifactIn is artifactAt with its digest in algo: the sha256 blob
// address moves to BlobDigest, as Store commits it.
func artifactIn(t testing.TB, algo digest.Algorithm, path string, content []byte) storage.Artifact {
	t.Helper()
	a := artifactAt(t, path, content)
	if algo != digest.SHA256 {
		a.Digest, a.BlobDigest = algo.FromBytes(content).String(), a.Digest
	}
	return a
}

func storeCmdsIn(t testing.TB, algo digest.Algorithm, id, path string, content []byte) [][]byte {
	t.Helper()
	cmds := chunkCmds(id, content, 4096)
	return append(cmds, EncodeCommit(Commit{UploadID: id, Chunks: uint32(len(cmds)), Artifact: artifactIn(t, algo, path, content)}))
}

// A commit whose digest is not sha256 stores its blob at the sha256
// address, reports the digest it was committed with, verifies against the
// blob address, and shares the blob with commits of the same bytes in any
// algorithm, the old sha256-only form included.
func TestCommitOtherAlgorithm(t *testing.T) {
	for _, size := range []int{100, SmallBlobSize + 1} {
		f := newFSM(t)
		fd := &feeder{f: f}
		content := pattern(9, size)
		blob := digestOf(content)
		fd.ok(t, storeCmdsIn(t, digest.BLAKE3, "u1", pathA, content)...)

		if !f.HasBlob(blob) {
			t.Fatalf("%d bytes: no blob at the sha256 address %s", size, blob)
		}
		if _, err := os.Stat(f.dirs.blob(blob)); err != nil {
			t.Fatalf("%d bytes: blob file: %v", size, err)
		}
		if blobs, _ := files(t, f); blobs != 1 {
			t.Fatalf("%d bytes: %d blob files, want 1", size, blobs)
		}
		c, err := f.Open(mustKey(t, pathA))
		if err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
		if want := digest.BLAKE3.FromBytes(content).String(); c.Artifact.Digest != want || c.Artifact.BlobDigest != blob {
			t.Fatalf("%d bytes: artifact digest %q, blob %q; want %q, %q", size, c.Artifact.Digest, c.Artifact.BlobDigest, want, blob)
		}
		// A first download hashes sha256 and checks it against the blob.
		if err := c.VerifyNow(); err != nil || !c.Verified() {
			t.Fatalf("%d bytes: verify: %v", size, err)
		}
		got, err := io.ReadAll(c.Reader())
		c.Close()
		if err != nil || !bytes.Equal(got, content) {
			t.Fatalf("%d bytes: read %d bytes, %v", size, len(got), err)
		}
		if a, err := f.ArtifactWithDigest(blob); err != nil || a.Path() != pathA {
			t.Fatalf("%d bytes: artifact with blob %s: %+v, %v", size, blob, a, err)
		}
		if st := f.Integrity(); st.Corrupt != 0 {
			t.Fatalf("%d bytes: %d blobs found corrupt", size, st.Corrupt)
		}

		fd.ok(t, storeCmdsIn(t, digest.SHA256, "u2", pathB, content)...)
		fd.ok(t, storeCmdsIn(t, digest.SHA512, "u3", pathC, content)...)
		wantBlobs(t, f, blob)
		wantRefs(t, f, blob, 3)
		if blobs, uploads := files(t, f); blobs != 1 || uploads != 0 {
			t.Fatalf("%d bytes: %d blob files, %d upload files after three commits of one content", size, blobs, uploads)
		}
		fd.ok(t, EncodeDeleteArtifacts([]string{pathA, pathC}))
		wantRefs(t, f, blob, 1)
		wantArtifact(t, f, pathB, content)
		fd.ok(t, EncodeDeleteArtifacts([]string{pathB}))
		wantBlobs(t, f)
		if blobs, _ := files(t, f); blobs != 0 {
			t.Fatalf("%d bytes: %d blob files after every artifact went", size, blobs)
		}
	}
}

// Replacing an artifact committed in one algorithm by one of another
// releases the old blob by its blob address.
func TestRecommitAcrossAlgorithms(t *testing.T) {
	f := newFSM(t)
	fd := &feeder{f: f}
	one, two := pattern(1, 500), pattern(2, 600)
	fd.ok(t, storeCmdsIn(t, storage.SHA1, "u1", pathA, one)...)
	fd.ok(t, storeCmdsIn(t, digest.SHA256, "u2", pathA, two)...)
	wantBlobs(t, f, digestOf(two))
	fd.ok(t, storeCmdsIn(t, digest.SHA384, "u3", pathA, one)...)
	wantBlobs(t, f, digestOf(one))
	st, err := f.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Artifacts != 1 || st.Bytes != int64(len(one)) || st.BlobBytes != int64(len(one)) {
		t.Fatalf("stats %+v", st)
	}
}

// A commit carrying BlobDigest must name a sha256 blob and a digest of
// another algorithm in <algorithm>:<lower-case hex>, and its bytes must
// hash to the blob address; anything else changes nothing.
func TestCommitOtherAlgorithmRejected(t *testing.T) {
	content := pattern(4, 3000)
	good := artifactIn(t, digest.BLAKE3, pathA, content)
	for name, c := range map[string]struct {
		edit func(a *storage.Artifact)
		want error
	}{
		"digest is sha256 too":   {func(a *storage.Artifact) { a.Digest = a.BlobDigest }, ErrInvalidCommand},
		"blob digest not sha256": {func(a *storage.Artifact) { a.BlobDigest = digest.SHA512.FromBytes(content).String() }, ErrInvalidCommand},
		"blob digest upper case": {func(a *storage.Artifact) { a.BlobDigest = "sha256:" + upper(a.BlobDigest[7:]) }, ErrInvalidCommand},
		"digest without hex":     {func(a *storage.Artifact) { a.Digest = "blake3:" }, ErrInvalidCommand},
		"digest upper case":      {func(a *storage.Artifact) { a.Digest = "blake3:" + upper(a.Digest[7:]) }, ErrInvalidCommand},
		"digest bad algorithm":   {func(a *storage.Artifact) { a.Digest = "Blake3" + a.Digest[6:] }, ErrInvalidCommand},
		"digest too long":        {func(a *storage.Artifact) { a.Digest += a.Digest[7:] + a.Digest[7:] }, ErrInvalidCommand},
		"blob of other bytes":    {func(a *storage.Artifact) { a.BlobDigest = digestOf([]byte("other")) }, storage.ErrDigestMismatch},
		"no blob, digest blake3": {func(a *storage.Artifact) { a.BlobDigest = ""; a.Digest = good.Digest }, ErrInvalidCommand},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFSM(t)
			fd := &feeder{f: f}
			cmds := chunkCmds("u1", content, 1000)
			fd.ok(t, cmds...)
			before := contentHash(t, f)
			a := good
			c.edit(&a)
			res := fd.apply(EncodeCommit(Commit{UploadID: "u1", Chunks: uint32(len(cmds)), Artifact: a}))
			if err, _ := res.(error); !errors.Is(err, c.want) {
				t.Fatalf("commit of %+v: %v, want %v", a, res, c.want)
			}
			if after := contentHash(t, f); after != before {
				t.Fatal("a rejected commit changed the state")
			}
		})
	}
}

func upper(s string) string { return string(bytes.ToUpper([]byte(s))) }

// oldCommit is a commit exactly as releases before --artifact-digest-algo
// encoded it: no blobDigest in the artifact JSON.
var oldCommit = append([]byte{byte(cmdCommit), 2, 'u', '1', 0, 0, 0, 1},
	`{"kind":"gitrepository","namespace":"default","name":"podinfo","file":"abc.tar.gz","revision":"main@sha1:0123456789abcdef","digest":"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","size":3,"lastUpdateTime":"2025-06-01T12:00:00Z"}`...)

// oldCommitHash is the content hash after oldCommit's upload and commit,
// as the release before --artifact-digest-algo computed it.
const oldCommitHash = "dab25a7f2987c2f250e245d49ccdad3acfbc816cc93a8329ec2c42b9e214bf3a"

// An old commit decodes without a blob digest, encodes back to the same
// bytes, and applies to the same state as before the field existed.
func TestOldCommitAppliesUnchanged(t *testing.T) {
	_, cmd, err := decodeCommand(oldCommit)
	if err != nil {
		t.Fatal(err)
	}
	c := cmd.(commitCmd)
	if c.Artifact.BlobDigest != "" || c.Artifact.Blob() != c.Artifact.Digest {
		t.Fatalf("old commit decodes with blob digest %q, blob %q", c.Artifact.BlobDigest, c.Artifact.Blob())
	}
	if again := EncodeCommit(c.Commit); !bytes.Equal(again, oldCommit) {
		t.Fatalf("old commit re-encodes differently:\n%s\n%s", again, oldCommit)
	}
	f := newFSM(t)
	fd := &feeder{f: f}
	fd.ok(t, EncodeChunk(Chunk{UploadID: "u1", StartedAt: testTime.UnixNano(), Data: []byte("abc")}), oldCommit)
	wantArtifact(t, f, pathA, []byte("abc"))
	if h := contentHash(t, f); h != oldCommitHash {
		t.Fatalf("content hash %s, the release before the blob digest had %s", h, oldCommitHash)
	}
}

// The content hash covers the algorithm an artifact was committed in.
func TestContentHashCoversDigestAlgorithm(t *testing.T) {
	content := pattern(5, 2000)
	hashes := map[string]digest.Algorithm{}
	for _, algo := range storage.DigestAlgorithms {
		f := newFSM(t)
		(&feeder{f: f}).ok(t, storeCmdsIn(t, algo, "u1", pathA, content)...)
		h := contentHash(t, f)
		if prev, dup := hashes[h]; dup {
			t.Fatalf("%s and %s commits of the same content hash the same", prev, algo)
		}
		hashes[h] = algo
	}
}

// A snapshot carries artifacts of any algorithm: the restored replica
// serves them from their sha256 blobs, and a delete after the restore
// releases the blob by its address.
func TestSnapshotRestoreOtherAlgorithm(t *testing.T) {
	src := newFSM(t)
	content := pattern(6, SmallBlobSize+10)
	(&feeder{f: src}).ok(t, storeCmdsIn(t, digest.BLAKE3, "u1", pathA, content)...)
	sink := snapshotOf(t, src)

	dst := newFSM(t)
	if err := dst.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if got, want := contentHash(t, dst), contentHash(t, src); got != want {
		t.Fatalf("restored content hash %s, want %s", got, want)
	}
	a, err := dst.Artifact(mustKey(t, pathA))
	if err != nil || a.Digest != digest.BLAKE3.FromBytes(content).String() || a.BlobDigest != digestOf(content) {
		t.Fatalf("restored artifact %+v, %v", a, err)
	}
	wantBlobs(t, dst, digestOf(content))
	fd := &feeder{f: dst, index: dst.AppliedIndex()}
	fd.ok(t, EncodeDeleteArtifacts([]string{pathA}))
	wantBlobs(t, dst)
}
