package fsm

import (
	"bytes"
	"errors"
	"io"
	"os"
	"slices"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/sourceraft/sourceraft/storage"
	bolt "go.etcd.io/bbolt"
)

const (
	pathA = "gitrepository/default/podinfo/abc.tar.gz"
	pathB = "gitrepository/default/podinfo/def.tar.gz"
)

func TestHandlers(t *testing.T) {
	content := pattern(1, 3000)
	other := pattern(2, 1500)
	upload := func(id string, c []byte) [][]byte { return chunkCmds(id, c, 1000) }
	store := func(id, path string, c []byte) [][]byte { return storeCmds(t, id, path, c, 1000) }
	commit := func(id string, chunks uint32, a storage.Artifact) []byte {
		return EncodeCommit(Commit{UploadID: id, Chunks: chunks, Artifact: a})
	}
	badCRC := EncodeChunk(Chunk{UploadID: "u1", Data: []byte("data")})
	badCRC[len(badCRC)-1] ^= 0xff
	badPath := artifactAt(t, pathA, content)
	badPath.Namespace = ".."
	noDigest := artifactAt(t, pathA, content)
	noDigest.Digest = ""
	otherDigest := artifactAt(t, pathA, content)
	otherDigest.Digest = digestOf(other)
	wrongSize := artifactAt(t, pathA, content)
	wrongSize.Size--
	sameDigestOtherSize := artifactAt(t, pathB, content)
	sameDigestOtherSize.Size = int64(len(other))

	tests := []struct {
		name  string
		setup [][]byte
		cmd   []byte
		want  error // nil: applies; else wrapped by the result and nothing changes
		check func(t *testing.T, f *FSM)
	}{
		{
			name: "first chunk starts an upload",
			cmd:  EncodeChunk(Chunk{UploadID: "u1", StartedAt: 42, Data: []byte("abc")}),
			check: func(t *testing.T, f *FSM) {
				wantUploads(t, f, Upload{ID: "u1", StartedAt: 42, Chunks: 1, Bytes: 3})
			},
		},
		{
			name:  "next chunk extends the upload and keeps its start",
			setup: upload("u1", content)[:1],
			cmd:   EncodeChunk(Chunk{UploadID: "u1", Seq: 1, StartedAt: 99, Data: []byte("abc")}),
			check: func(t *testing.T, f *FSM) {
				wantUploads(t, f, Upload{ID: "u1", StartedAt: testTime.UnixNano(), Chunks: 2, Bytes: 1003})
			},
		},
		{name: "chunk skipping a seq", setup: upload("u1", content)[:1], cmd: upload("u1", content)[2], want: ErrChunkSequence},
		{name: "chunk repeating a seq", setup: upload("u1", content)[:2], cmd: upload("u1", content)[1], want: ErrChunkSequence},
		{name: "first chunk twice", setup: upload("u1", content)[:2], cmd: upload("u1", content)[0], want: ErrChunkSequence},
		{name: "chunk of an unknown upload", cmd: upload("u1", content)[1], want: ErrUnknownUpload},
		{name: "chunk failing its checksum", cmd: badCRC, want: ErrChunkChecksum},
		{name: "chunk without upload id", cmd: EncodeChunk(Chunk{Data: []byte("x")}), want: ErrInvalidCommand},
		{name: "chunk too large", cmd: EncodeChunk(Chunk{UploadID: "u1", Data: make([]byte, storage.MaxChunkSize+1)}), want: ErrInvalidCommand},
		{
			name:  "commit makes the artifact visible",
			setup: upload("u1", content),
			cmd:   commit("u1", 3, artifactAt(t, pathA, content)),
			check: func(t *testing.T, f *FSM) {
				wantArtifact(t, f, pathA, content)
				wantUploads(t, f)
			},
		},
		{name: "commit of an unknown upload", cmd: commit("u1", 3, artifactAt(t, pathA, content)), want: ErrUnknownUpload},
		{name: "commit with missing chunks", setup: upload("u1", content)[:2], cmd: commit("u1", 3, artifactAt(t, pathA, content)), want: ErrIncompleteUpload},
		{name: "commit with a wrong chunk count", setup: upload("u1", content), cmd: commit("u1", 4, artifactAt(t, pathA, content)), want: ErrIncompleteUpload},
		{name: "commit with a wrong size", setup: upload("u1", content), cmd: commit("u1", 3, wrongSize), want: ErrIncompleteUpload},
		{name: "commit of an invalid path", setup: upload("u1", content), cmd: commit("u1", 3, badPath), want: storage.ErrInvalidPath},
		{name: "commit without digest", setup: upload("u1", content), cmd: commit("u1", 3, noDigest), want: ErrInvalidCommand},
		{name: "commit of content hashing to another digest", setup: upload("u1", content), cmd: commit("u1", 3, otherDigest), want: storage.ErrDigestMismatch},
		{name: "commit twice", setup: store("u1", pathA, content), cmd: commit("u1", 3, artifactAt(t, pathA, content)), want: ErrUnknownUpload},
		{
			name:  "commit of a stored digest with another size",
			setup: slices.Concat(store("u1", pathA, content), upload("u2", other)),
			cmd:   commit("u2", 2, sameDigestOtherSize),
			want:  storage.ErrDigestMismatch,
		},
		{
			name:  "commit replacing a path releases the old blob",
			setup: slices.Concat(store("u1", pathA, content), upload("u2", other)),
			cmd:   commit("u2", 2, artifactAt(t, pathA, other)),
			check: func(t *testing.T, f *FSM) {
				wantArtifact(t, f, pathA, other)
				wantBlobs(t, f, digestOf(other))
			},
		},
		{
			name:  "recommitting the same content at a path keeps one blob",
			setup: slices.Concat(store("u1", pathA, content), upload("u2", content)),
			cmd:   commit("u2", 3, artifactAt(t, pathA, content)),
			check: func(t *testing.T, f *FSM) {
				wantArtifact(t, f, pathA, content)
				wantBlobs(t, f, digestOf(content))
				wantRefs(t, f, digestOf(content), 1)
			},
		},
		{
			name:  "delete removes artifacts and their blobs, ignoring unknown paths",
			setup: slices.Concat(store("u1", pathA, content), store("u2", pathB, other)),
			cmd:   EncodeDeleteArtifacts([]string{pathA, "gitrepository/default/nope/x.tar.gz", pathA}),
			check: func(t *testing.T, f *FSM) {
				wantMissing(t, f, pathA)
				wantArtifact(t, f, pathB, other)
				wantBlobs(t, f, digestOf(other))
			},
		},
		{
			name:  "abort removes uploads, ignoring unknown and committed ones",
			setup: slices.Concat(upload("u1", content)[:2], upload("u2", other)[:1], store("u3", pathA, content)),
			cmd:   EncodeAbortUploads([]string{"u1", "u3", "nope", ""}),
			check: func(t *testing.T, f *FSM) {
				wantUploads(t, f, Upload{ID: "u2", StartedAt: testTime.UnixNano(), Chunks: 1, Bytes: 1000})
				wantArtifact(t, f, pathA, content)
			},
		},
		{
			name: "expire removes uploads started before the leader's time",
			setup: [][]byte{
				EncodeChunk(Chunk{UploadID: "old", StartedAt: 10, Data: []byte("a")}),
				EncodeChunk(Chunk{UploadID: "edge", StartedAt: 20, Data: []byte("b")}),
				EncodeChunk(Chunk{UploadID: "new", StartedAt: 30, Data: []byte("c")}),
			},
			cmd: EncodeExpireUploads(20),
			check: func(t *testing.T, f *FSM) {
				wantUploads(t, f, Upload{ID: "edge", StartedAt: 20, Chunks: 1, Bytes: 1}, Upload{ID: "new", StartedAt: 30, Chunks: 1, Bytes: 1})
			},
		},
		{
			name:  "set node registers and replaces",
			setup: [][]byte{EncodeSetNode(Node{ID: "b", RaftAddr: "b:1"}), EncodeSetNode(Node{ID: "a", RaftAddr: "old"})},
			cmd:   EncodeSetNode(Node{ID: "a", RaftAddr: "a:1", APIAddr: "a:2", StorageAddr: "a:3"}),
			check: func(t *testing.T, f *FSM) {
				wantNodes(t, f, Node{ID: "a", RaftAddr: "a:1", APIAddr: "a:2", StorageAddr: "a:3"}, Node{ID: "b", RaftAddr: "b:1"})
			},
		},
		{name: "set node without id", cmd: EncodeSetNode(Node{RaftAddr: "x"}), want: ErrInvalidCommand},
		{
			name:  "remove node, ignoring unknown ones",
			setup: [][]byte{EncodeSetNode(Node{ID: "a"}), EncodeSetNode(Node{ID: "b"}), EncodeRemoveNode("zz")},
			cmd:   EncodeRemoveNode("a"),
			check: func(t *testing.T, f *FSM) { wantNodes(t, f, Node{ID: "b"}) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFSM(t)
			fd := &feeder{f: f}
			fd.ok(t, tt.setup...)
			before := contentHash(t, f)

			res := fd.apply(tt.cmd)
			if f.AppliedIndex() != fd.index {
				t.Fatalf("applied index %d, want %d", f.AppliedIndex(), fd.index)
			}
			if tt.want == nil {
				if res != nil {
					t.Fatalf("result %v, want nil", res)
				}
				tt.check(t, f)
				return
			}
			if err, _ := res.(error); !errors.Is(err, tt.want) {
				t.Fatalf("result %v, want %v", res, tt.want)
			}
			if after := contentHash(t, f); after != before {
				t.Fatal("a rejected command changed the state")
			}
		})
	}
}

func TestDedup(t *testing.T) {
	f := newFSM(t)
	fd := &feeder{f: f}
	content := pattern(3, 2*storage.MaxChunkSize+100)
	fd.ok(t, storeCmds(t, "u1", pathA, content)...)
	fd.ok(t, storeCmds(t, "u2", pathB, content)...)

	wantBlobs(t, f, digestOf(content))
	wantRefs(t, f, digestOf(content), 2)
	st, err := f.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if want := (Stats{Artifacts: 2, Bytes: 2 * int64(len(content)), Blobs: 1, BlobBytes: int64(len(content)), AppliedIndex: fd.index}); st != want {
		t.Fatalf("stats %+v, want %+v", st, want)
	}
	if blobs, uploads := files(t, f); blobs != 1 || uploads != 0 {
		t.Fatalf("%d blob files and %d upload files, want 1 and 0: the duplicate was kept", blobs, uploads)
	}

	fd.ok(t, EncodeDeleteArtifacts([]string{pathA}))
	wantMissing(t, f, pathA)
	wantArtifact(t, f, pathB, content)
	wantRefs(t, f, digestOf(content), 1)

	fd.ok(t, EncodeDeleteArtifacts([]string{pathB}))
	wantBlobs(t, f)
	if blobs, uploads := files(t, f); blobs != 0 || uploads != 0 {
		t.Fatalf("%d blob files and %d upload files left after deleting every artifact", blobs, uploads)
	}
}

func TestNonCommandLogsAdvanceIndex(t *testing.T) {
	f := newFSM(t)
	before := contentHash(t, f)
	res := f.ApplyBatch([]*raft.Log{
		{Index: 1, Type: raft.LogConfiguration, Data: []byte("not a command")},
		{Index: 2, Type: raft.LogNoop},
		{Index: 3, Type: raft.LogBarrier},
	})
	if !slices.Equal(res, []any{nil, nil, nil}) {
		t.Fatalf("results %v", res)
	}
	if f.AppliedIndex() != 3 || contentHash(t, f) != before {
		t.Fatalf("applied index %d, content changed: %v", f.AppliedIndex(), contentHash(t, f) != before)
	}
}

func TestUndecodableCommandsPanic(t *testing.T) {
	for name, cmd := range map[string][]byte{
		"empty":                   {},
		"unknown type":            {0x33, 1, 2},
		"truncated chunk":         {byte(cmdChunk), 0xff},
		"chunk without checksum":  EncodeChunk(Chunk{UploadID: "u"})[:17],
		"commit with broken json": append(EncodeCommit(Commit{UploadID: "u"}), '}'),
		"trailing bytes":          append(EncodeRemoveNode("a"), 0),
		"list count too large":    {byte(cmdDeleteArtifacts), 9, 1, 'a'},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFSM(t)
			fd := &feeder{f: f}
			fd.ok(t, EncodeSetNode(Node{ID: "a"}))
			before := contentHash(t, f)
			mustPanic(t, func() { fd.apply(cmd) })
			if f.AppliedIndex() != 1 || contentHash(t, f) != before {
				t.Fatal("a panicking command left changes behind")
			}
			fd.index-- // the FSM is still usable: Raft would retry the same index
			fd.ok(t, EncodeRemoveNode("a"))
		})
	}
}

func TestSkipBit(t *testing.T) {
	f := newFSM(t)
	fd := &feeder{f: f}
	before := contentHash(t, f)
	if res := fd.apply([]byte{0x80 | 0x33, 1, 2, 3}); res != nil {
		t.Fatalf("unknown optional command: %v", res)
	}
	if f.AppliedIndex() != 1 || contentHash(t, f) != before {
		t.Fatal("unknown optional command was not skipped cleanly")
	}
	known := EncodeSetNode(Node{ID: "a"})
	known[0] |= 0x80
	fd.ok(t, known)
	wantNodes(t, f, Node{ID: "a"})
}

func TestRegisterDuplicatePanics(t *testing.T) {
	table := registerAll(map[cmdType]handler{})
	mustPanic(t, func() { register(table, cmdChunk, "again", decodeChunk, applyChunk) })
	mustPanic(t, func() { register(map[cmdType]handler{}, cmdChunk|skipUnknown, "flagged", decodeChunk, applyChunk) })
}

func wantArtifact(t *testing.T, f *FSM, path string, content []byte) {
	t.Helper()
	c, err := f.Open(mustKey(t, path))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a := c.Artifact
	if a.Path() != path || a.Digest != digestOf(content) || a.Size != int64(len(content)) || !a.LastUpdateTime.Equal(testTime) {
		t.Fatalf("artifact %+v", a)
	}
	got, err := io.ReadAll(c.Reader())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, content) {
		t.Fatalf("%s: read %d bytes that differ from the %d stored", path, len(got), len(content))
	}
}

func wantMissing(t *testing.T, f *FSM, path string) {
	t.Helper()
	if _, err := f.Artifact(mustKey(t, path)); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("artifact %s: %v, want not found", path, err)
	}
}

func wantUploads(t *testing.T, f *FSM, want ...Upload) {
	t.Helper()
	got, err := f.Uploads()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("uploads %+v, want %+v", got, want)
	}
}

func wantNodes(t *testing.T, f *FSM, want ...Node) {
	t.Helper()
	got, err := f.Nodes()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("nodes %+v, want %+v", got, want)
	}
}

func wantBlobs(t *testing.T, f *FSM, digests ...string) {
	t.Helper()
	st, err := f.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Blobs != len(digests) {
		t.Fatalf("%d blobs, want %d", st.Blobs, len(digests))
	}
	for _, d := range digests {
		if !f.HasBlob(d) {
			t.Fatalf("blob %s missing", d)
		}
		if err := f.Verify(d); err != nil {
			t.Fatal(err)
		}
	}
}

func wantRefs(t *testing.T, f *FSM, digest string, refs uint32) {
	t.Helper()
	var rec blobRecord
	err := f.view(func(tx *bolt.Tx) error {
		var err error
		rec, err = decodeBlobRecord(tx.Bucket(bucketBlobs).Get([]byte(digest)))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if rec.Refs != refs {
		t.Fatalf("blob %s has %d references, want %d", digest, rec.Refs, refs)
	}
}

// files counts the blob and upload files on disk.
func files(t *testing.T, f *FSM) (blobs, uploads int) {
	t.Helper()
	b, err := os.ReadDir(f.dirs.sha256)
	if err != nil {
		t.Fatal(err)
	}
	u, err := os.ReadDir(f.dirs.uploads)
	if err != nil {
		t.Fatal(err)
	}
	return len(b), len(u)
}
