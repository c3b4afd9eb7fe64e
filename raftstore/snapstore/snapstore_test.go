package snapstore

import (
	"bytes"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// part is one piece of a synthetic snapshot: inline bytes, or a file the
// FSM would link (an immutable blob).
type part struct {
	inline []byte
	file   string
	// size is how much of file the snapshot holds; 0 is all of it.
	size int64
}

// synthSnapshot is a raft.FSMSnapshot as an FSM with immutable blob files
// persists one: files are linked when the sink can, written otherwise.
type synthSnapshot struct{ parts []part }

func (s synthSnapshot) Persist(sink raft.SnapshotSink) error {
	err := func() error {
		for _, p := range s.parts {
			if p.file == "" {
				if _, err := sink.Write(p.inline); err != nil {
					return err
				}
				continue
			}
			size := p.size
			if size == 0 {
				fi, err := os.Stat(p.file)
				if err != nil {
					return err
				}
				size = fi.Size()
			}
			if l, ok := sink.(Linker); ok {
				if err := l.LinkFile(p.file, size); err != nil {
					return err
				}
				continue
			}
			f, err := os.Open(p.file)
			if err != nil {
				return err
			}
			_, err = io.CopyN(sink, f, size)
			f.Close()
			if err != nil {
				return err
			}
		}
		return nil
	}()
	if err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (synthSnapshot) Release() {}

// inlineOnly hides LinkFile, as a sink of raft's own store would.
type inlineOnly struct{ raft.SnapshotSink }

func randomBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

func writeFile(t *testing.T, path string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(path, data, 0o640); err != nil {
		t.Fatal(err)
	}
	return path
}

func newStore(t *testing.T, base string, retain int) *Store {
	t.Helper()
	s, err := New(base, retain)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var testConfig = raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: "a", Address: "127.0.0.1:1"}}}

func persist(t *testing.T, s *Store, index uint64, snap synthSnapshot, link bool) string {
	t.Helper()
	sink, err := s.Create(1, index, 3, testConfig, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	var target raft.SnapshotSink = sink
	if !link {
		target = inlineOnly{sink}
	}
	if err := snap.Persist(target); err != nil {
		t.Fatal(err)
	}
	return sink.ID()
}

func readSnapshot(t *testing.T, s *Store, id string) (*raft.SnapshotMeta, []byte) {
	t.Helper()
	meta, rc, err := s.Open(id)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return meta, data
}

func nlink(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return uint64(fi.Sys().(*syscall.Stat_t).Nlink)
}

func TestLinkedStreamIsTheInlineStream(t *testing.T) {
	blobs := t.TempDir()
	a := writeFile(t, filepath.Join(blobs, "a"), randomBytes(1, 3<<20+17))
	b := writeFile(t, filepath.Join(blobs, "b"), randomBytes(2, 4096))
	empty := writeFile(t, filepath.Join(blobs, "empty"), nil)
	snap := synthSnapshot{parts: []part{
		{file: a}, // a link first: no inline segment before it
		{inline: []byte("header")},
		{inline: randomBytes(3, 70000)},
		{file: b}, {file: empty}, {file: a},
		{inline: []byte("trailer")},
	}}
	var want bytes.Buffer
	for _, p := range snap.parts {
		if p.file != "" {
			data, _ := os.ReadFile(p.file)
			want.Write(data)
		} else {
			want.Write(p.inline)
		}
	}

	linked := newStore(t, t.TempDir(), 1)
	lid := persist(t, linked, 10, snap, true)
	inline := newStore(t, t.TempDir(), 1)
	iid := persist(t, inline, 10, snap, false)

	lmeta, lbytes := readSnapshot(t, linked, lid)
	imeta, ibytes := readSnapshot(t, inline, iid)
	if !bytes.Equal(lbytes, want.Bytes()) || !bytes.Equal(ibytes, want.Bytes()) {
		t.Fatalf("streams differ: linked %d bytes, inline %d bytes, want %d", len(lbytes), len(ibytes), want.Len())
	}
	if lmeta.Size != int64(want.Len()) || imeta.Size != lmeta.Size {
		t.Fatalf("meta sizes %d (linked), %d (inline), want %d", lmeta.Size, imeta.Size, want.Len())
	}
	if lmeta.Index != 10 || lmeta.Term != 3 || len(lmeta.Configuration.Servers) != 1 || lmeta.ConfigurationIndex != 1 {
		t.Fatalf("meta %+v", lmeta)
	}
	// The linked snapshot holds the blobs by link, not by copy: a has two
	// more names, b one.
	if n := nlink(t, a); n != 3 {
		t.Fatalf("a has %d links, want 3 (itself and two segments)", n)
	}
	if n := nlink(t, b); n != 2 {
		t.Fatalf("b has %d links, want 2", n)
	}
}

// TestLinkedPrefixOfAGrowingFile links the first bytes of a file that is
// still being written (an upload in progress): the snapshot holds exactly
// those bytes, whatever is appended to the file afterwards.
func TestLinkedPrefixOfAGrowingFile(t *testing.T) {
	data := randomBytes(3, 1<<16)
	src := writeFile(t, filepath.Join(t.TempDir(), "upload"), data[:40000])
	before, after := randomBytes(4, 300), randomBytes(5, 200)
	snap := synthSnapshot{parts: []part{{inline: before}, {file: src, size: 30000}, {inline: after}}}
	s := newStore(t, t.TempDir(), 1)
	id := persist(t, s, 5, snap, true)
	f, err := os.OpenFile(src, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data[40000:]); err != nil {
		t.Fatal(err)
	}
	f.Close()
	want := append(append(append([]byte(nil), before...), data[:30000]...), after...)
	meta, got := readSnapshot(t, s, id)
	if !bytes.Equal(got, want) || meta.Size != int64(len(want)) {
		t.Fatalf("snapshot holds %d bytes (meta %d), want the %d of the inline parts and the file's first 30000", len(got), meta.Size, len(want))
	}
	inline := newStore(t, t.TempDir(), 1)
	if _, got := readSnapshot(t, inline, persist(t, inline, 5, snap, false)); !bytes.Equal(got, want) {
		t.Fatal("the inline snapshot of the same parts differs")
	}
}

func TestLinkedFileOutlivesItsSource(t *testing.T) {
	blobs := t.TempDir()
	content := randomBytes(4, 1<<20)
	a := writeFile(t, filepath.Join(blobs, "a"), content)
	s := newStore(t, t.TempDir(), 1)
	id := persist(t, s, 5, synthSnapshot{parts: []part{{inline: []byte("x")}, {file: a}}}, true)
	// Open before the unlink too: a reader keeps reading whatever happens.
	_, rc, err := s.Open(id)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if err := os.Remove(a); err != nil {
		t.Fatal(err)
	}
	if got, _ := io.ReadAll(rc); !bytes.Equal(got, append([]byte("x"), content...)) {
		t.Fatal("reader opened before the unlink returned other bytes")
	}
	if _, got := readSnapshot(t, s, id); !bytes.Equal(got, append([]byte("x"), content...)) {
		t.Fatal("snapshot lost the linked file when its source was unlinked")
	}
}

func TestRetentionRemovesOldSnapshotsLinks(t *testing.T) {
	blobs := t.TempDir()
	a := writeFile(t, filepath.Join(blobs, "a"), randomBytes(5, 1000))
	b := writeFile(t, filepath.Join(blobs, "b"), randomBytes(6, 1000))
	s := newStore(t, t.TempDir(), 1)
	persist(t, s, 5, synthSnapshot{parts: []part{{file: a}}}, true)
	if n := nlink(t, a); n != 2 {
		t.Fatalf("a has %d links after the first snapshot, want 2", n)
	}
	second := persist(t, s, 9, synthSnapshot{parts: []part{{file: b}}}, true)
	metas, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(metas) != 1 || metas[0].ID != second {
		t.Fatalf("listed %d snapshots, want only %s", len(metas), second)
	}
	if n := nlink(t, a); n != 1 {
		t.Fatalf("a has %d links after its snapshot was retired, want 1", n)
	}
	if n := nlink(t, b); n != 2 {
		t.Fatalf("b has %d links, want 2", n)
	}

	// Newest first with retain 2.
	s2 := newStore(t, t.TempDir(), 2)
	old := persist(t, s2, 5, synthSnapshot{parts: []part{{inline: []byte("old")}}}, true)
	newer := persist(t, s2, 7, synthSnapshot{parts: []part{{inline: []byte("new")}}}, true)
	metas, _ = s2.List()
	if len(metas) != 2 || metas[0].ID != newer || metas[1].ID != old {
		t.Fatalf("list order %v, want %s then %s", ids(metas), newer, old)
	}
}

func ids(metas []*raft.SnapshotMeta) []string {
	var out []string
	for _, m := range metas {
		out = append(out, m.ID)
	}
	return out
}

func TestIncompleteSnapshotsAreNeverListed(t *testing.T) {
	blobs := t.TempDir()
	a := writeFile(t, filepath.Join(blobs, "a"), randomBytes(7, 5000))
	base := t.TempDir()
	s := newStore(t, base, 1)

	// A crash mid-create: written and linked, never closed.
	sink, err := s.Create(1, 5, 2, testConfig, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	sink.Write([]byte("partial"))
	if err := sink.(Linker).LinkFile(a, 5000); err != nil {
		t.Fatal(err)
	}
	if metas, err := s.List(); err != nil || len(metas) != 0 {
		t.Fatalf("incomplete snapshot listed: %v, %v", ids(metas), err)
	}
	// The next start removes it, and the link with it.
	s = newStore(t, base, 1)
	entries, _ := os.ReadDir(filepath.Join(base, dirName))
	if len(entries) != 0 || nlink(t, a) != 1 {
		t.Fatalf("incomplete snapshot left %d entries, a has %d links", len(entries), nlink(t, a))
	}

	// Cancel removes what was written.
	sink, err = s.Create(1, 6, 2, testConfig, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	sink.Write([]byte("abandoned"))
	if err := sink.Cancel(); err != nil {
		t.Fatal(err)
	}
	entries, _ = os.ReadDir(filepath.Join(base, dirName))
	if len(entries) != 0 {
		t.Fatalf("cancelled snapshot left %d entries", len(entries))
	}

	// A link whose size is not what the FSM said fails the snapshot.
	sink, err = s.Create(1, 7, 2, testConfig, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := sink.(Linker).LinkFile(a, 5001); err == nil {
		t.Fatal("link of more bytes than the file holds accepted")
	}
	sink.Cancel()
	if metas, _ := s.List(); len(metas) != 0 {
		t.Fatalf("failed snapshot listed: %v", ids(metas))
	}
}

func TestCorruptSnapshotIsRefusedOnOpen(t *testing.T) {
	blobs := t.TempDir()
	a := writeFile(t, filepath.Join(blobs, "a"), randomBytes(8, 1<<16))
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, dir string)
	}{
		{"inline byte flipped", func(t *testing.T, dir string) { flipByte(t, segment(t, dir, ".inline"), 100) }},
		{"linked file truncated", func(t *testing.T, dir string) {
			if err := os.Truncate(segment(t, dir, ".link"), 4000); err != nil {
				t.Fatal(err)
			}
		}},
		{"inline truncated", func(t *testing.T, dir string) {
			if err := os.Truncate(segment(t, dir, ".inline"), 10); err != nil {
				t.Fatal(err)
			}
		}},
		{"segment missing", func(t *testing.T, dir string) {
			if err := os.Remove(segment(t, dir, ".link")); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := writeFile(t, filepath.Join(t.TempDir(), "a"), mustRead(t, a))
			s := newStore(t, t.TempDir(), 1)
			id := persist(t, s, 5, synthSnapshot{parts: []part{{inline: randomBytes(9, 1000)}, {file: src}}}, true)
			tc.damage(t, filepath.Join(s.dir, id))
			if _, _, err := s.Open(id); err == nil {
				t.Fatal("damaged snapshot opened")
			}
		})
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func segment(t *testing.T, dir, suffix string) string {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), suffix) {
			return filepath.Join(dir, e.Name())
		}
	}
	t.Fatalf("no %s segment in %s", suffix, dir)
	return ""
}

func flipByte(t *testing.T, path string, at int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
}

// TestLinkAcrossFilesystemsCopies links from tmpfs into a snapshot on
// the test's temp dir: the link fails with EXDEV and the bytes are copied.
func TestLinkAcrossFilesystemsCopies(t *testing.T) {
	base := t.TempDir()
	shm, err := os.MkdirTemp("/dev/shm", "snapstore-")
	if err != nil {
		t.Fatalf("need a tmpfs at /dev/shm for a second filesystem: %v", err)
	}
	defer os.RemoveAll(shm)
	var st1, st2 syscall.Stat_t
	if syscall.Stat(base, &st1) != nil || syscall.Stat(shm, &st2) != nil || st1.Dev == st2.Dev {
		t.Fatalf("%s and %s are on one filesystem; the test needs two", base, shm)
	}
	content := randomBytes(10, 200000)
	a := writeFile(t, filepath.Join(shm, "a"), content)
	s := newStore(t, base, 1)
	id := persist(t, s, 5, synthSnapshot{parts: []part{{file: a}, {inline: []byte("z")}}}, true)
	if nlink(t, a) != 1 {
		t.Fatal("cross-filesystem link reported as a link")
	}
	if _, got := readSnapshot(t, s, id); !bytes.Equal(got, append(content, 'z')) {
		t.Fatal("copied segment differs")
	}
}

// TestReadsSnapshotsOfRaftsFileStore: a replica upgraded in place keeps
// the snapshot raft's FileSnapshotStore wrote, CRC checked.
func TestReadsSnapshotsOfRaftsFileStore(t *testing.T) {
	base := t.TempDir()
	old, err := raft.NewFileSnapshotStoreWithLogger(base, 1, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	content := randomBytes(11, 300000)
	_, trans := raft.NewInmemTransport("127.0.0.1:1")
	sink, err := old.Create(1, 42, 3, testConfig, 1, trans)
	if err != nil {
		t.Fatal(err)
	}
	sink.Write(content)
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	s := newStore(t, base, 1)
	metas, err := s.List()
	if err != nil || len(metas) != 1 || metas[0].Index != 42 {
		t.Fatalf("list %v, %v", ids(metas), err)
	}
	meta, got := readSnapshot(t, s, metas[0].ID)
	if !bytes.Equal(got, content) || meta.Size != int64(len(content)) {
		t.Fatalf("read %d bytes of raft's snapshot, want %d", len(got), len(content))
	}
	flipByte(t, filepath.Join(s.dir, metas[0].ID, legacyFile), 7)
	if _, _, err := s.Open(metas[0].ID); err == nil {
		t.Fatal("corrupt legacy snapshot opened")
	}
	// A new snapshot retires it.
	persist(t, s, 50, synthSnapshot{parts: []part{{inline: []byte("new")}}}, true)
	if metas, _ := s.List(); len(metas) != 1 || metas[0].Index != 50 {
		t.Fatalf("after a new snapshot: %v", ids(metas))
	}
}
