package fsm

import (
	"bytes"
	"fmt"
	"reflect"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/opencontainers/go-digest"
)

func TestCodecRoundTrip(t *testing.T) {
	chunk := Chunk{UploadID: "u1", Seq: 7, StartedAt: -3, Data: []byte("payload")}
	got, err := decodeChunk(EncodeChunk(chunk)[1:])
	if err != nil || !reflect.DeepEqual(got.Chunk, chunk) || got.crc != checksum(chunk.Data) {
		t.Fatalf("chunk: %+v, %v", got, err)
	}
	if !bytes.Equal(got.value[4:], chunk.Data) {
		t.Fatal("stored chunk value is not checksum then data")
	}

	commit := Commit{UploadID: "u1", Chunks: 3, Artifact: artifactAt(t, pathA, []byte("x"))}
	commit.Artifact.Metadata = map[string]string{"b": "2", "a": "1"}
	c, err := decodeCommit(EncodeCommit(commit)[1:])
	if err != nil || c.UploadID != commit.UploadID || c.Chunks != commit.Chunks || c.Artifact.Path() != pathA ||
		!c.Artifact.LastUpdateTime.Equal(testTime) || c.Artifact.Metadata["b"] != "2" {
		t.Fatalf("commit: %+v, %v", c, err)
	}

	for _, list := range [][]string{nil, {""}, {pathA, pathB}} {
		for _, enc := range []func([]string) []byte{EncodeDeleteArtifacts, EncodeAbortUploads} {
			got, err := decodeStrings(enc(list)[1:])
			if err != nil || fmt.Sprint(got) != fmt.Sprint(list) || len(got) != len(list) {
				t.Fatalf("list %q: %q, %v", list, got, err)
			}
		}
	}
	if before, err := decodeExpireUploads(EncodeExpireUploads(-5)[1:]); err != nil || before != -5 {
		t.Fatalf("expire: %d, %v", before, err)
	}
	node := Node{ID: "n", RaftAddr: "r", APIAddr: "a", StorageAddr: "s"}
	if n, err := decodeSetNode(EncodeSetNode(node)[1:]); err != nil || n.Node != node {
		t.Fatalf("set node: %+v, %v", n, err)
	}
	if id, err := decodeRemoveNode(EncodeRemoveNode("n")[1:]); err != nil || id != "n" {
		t.Fatalf("remove node: %q, %v", id, err)
	}
}

// reencode encodes a decoded command again with the public encoders.
func reencode(cmd any) []byte {
	switch c := cmd.(type) {
	case chunkCmd:
		return EncodeChunk(c.Chunk)
	case commitCmd:
		return EncodeCommit(c.Commit)
	case []string:
		return EncodeDeleteArtifacts(c)
	case int64:
		return EncodeExpireUploads(c)
	case nodeCmd:
		return EncodeSetNode(c.Node)
	case string:
		return EncodeRemoveNode(c)
	}
	panic(fmt.Sprintf("no encoder for %T", cmd))
}

// FuzzDecode checks that the decoder never panics, that whatever it accepts
// encodes to a stable form, and that applying it never panics either: a
// handler must reject, not crash on, any command that decodes.
func FuzzDecode(f *testing.F) {
	for _, seed := range [][]byte{
		EncodeChunk(Chunk{UploadID: "u", Data: []byte("abc")}),
		EncodeChunk(Chunk{UploadID: "u", Seq: 1, Data: []byte("def")}),
		EncodeCommit(Commit{UploadID: "u", Chunks: 2, Artifact: artifactAt(f, pathA, []byte("abcdef"))}),
		EncodeCommit(Commit{UploadID: "u", Chunks: 2, Artifact: artifactIn(f, digest.BLAKE3, pathA, []byte("abcdef"))}),
		oldCommit,
		EncodeDeleteArtifacts([]string{pathA, pathB}),
		EncodeAbortUploads([]string{"u"}),
		EncodeExpireUploads(1 << 40),
		EncodeSetNode(Node{ID: "a", RaftAddr: "a:1"}),
		EncodeRemoveNode("a"),
		{0x80 | 0x7f, 1},
		{byte(cmdCommit), 1, 'u', 0, 0, 0, 1, 'n', 'u', 'l', 'l'},
		{byte(cmdChunk), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
	} {
		f.Add(seed)
	}
	fsm := newFSM(f)
	var index uint64
	f.Fuzz(func(t *testing.T, data []byte) {
		h, cmd, err := decodeCommand(data)
		if err != nil || h == nil {
			return
		}
		once := reencode(cmd)
		_, cmd2, err := decodeCommand(once)
		if err != nil {
			t.Fatalf("re-encoded %s command does not decode: %v", h.name, err)
		}
		if twice := reencode(cmd2); !bytes.Equal(once, twice) {
			t.Fatalf("%s command encodes unstably:\n%x\n%x", h.name, once, twice)
		}
		index++
		fsm.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: data})
	})
}
