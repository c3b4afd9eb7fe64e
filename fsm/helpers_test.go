package fsm

import (
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/sourceraft/sourceraft/storage"
)

// testTime is the leader clock every test command carries.
var testTime = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func newFSM(t testing.TB) *FSM {
	t.Helper()
	return openAt(t, filepath.Join(t.TempDir(), "fsm.db"))
}

func openAt(t testing.TB, path string) *FSM {
	t.Helper()
	f, err := Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return f
}

// feeder applies commands to an FSM with consecutive indexes, like Raft.
type feeder struct {
	f     *FSM
	index uint64
}

func (fd *feeder) log(cmd []byte) *raft.Log {
	fd.index++
	return &raft.Log{Index: fd.index, Type: raft.LogCommand, Data: cmd}
}

func (fd *feeder) apply(cmd []byte) any { return fd.f.Apply(fd.log(cmd)) }

func (fd *feeder) ok(t testing.TB, cmds ...[]byte) {
	t.Helper()
	for _, c := range cmds {
		if res := fd.apply(c); res != nil {
			t.Fatalf("apply log %d: %v", fd.index, res)
		}
	}
}

func digestOf(content []byte) string {
	sum := sha256.Sum256(content)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// chunkCmds splits content into chunks whose sizes cycle through sizes; an
// empty content still gets one empty chunk, as the leader sends it.
func chunkCmds(id string, content []byte, sizes ...int) [][]byte {
	if len(sizes) == 0 {
		sizes = []int{storage.MaxChunkSize}
	}
	var cmds [][]byte
	for i, off := 0, 0; off < len(content) || i == 0; i++ {
		n := min(sizes[i%len(sizes)], len(content)-off)
		cmds = append(cmds, EncodeChunk(Chunk{UploadID: id, Seq: uint32(i), StartedAt: testTime.UnixNano(), Data: content[off : off+n]}))
		off += n
	}
	return cmds
}

func artifactAt(t testing.TB, path string, content []byte) storage.Artifact {
	t.Helper()
	a, err := storage.ParsePath(path)
	if err != nil {
		t.Fatal(err)
	}
	a.Revision = "main@sha1:0123456789abcdef"
	a.Digest = digestOf(content)
	a.Size = int64(len(content))
	a.LastUpdateTime = testTime
	return a
}

// storeCmds returns the chunk commands and the commit storing content at path.
func storeCmds(t testing.TB, id, path string, content []byte, sizes ...int) [][]byte {
	t.Helper()
	cmds := chunkCmds(id, content, sizes...)
	return append(cmds, EncodeCommit(Commit{UploadID: id, Chunks: uint32(len(cmds)), Artifact: artifactAt(t, path, content)}))
}

func contentHash(t testing.TB, f *FSM) string {
	t.Helper()
	h, _, err := f.ContentHash()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func mustPanic(t *testing.T, fn func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Fatal("did not panic")
		}
	}()
	fn()
}

// pattern returns n deterministic bytes that differ with seed.
func pattern(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed + byte(i>>8)
	}
	return b
}

func mustKey(t testing.TB, path string) storage.Key {
	t.Helper()
	k, err := storage.ParseKey(path)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
