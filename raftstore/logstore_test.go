package raftstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/sourceraft/sourceraft/storage"
)

// mustOpenLogStore opens the log store of kind in dir, as a node would.
func mustOpenLogStore(t *testing.T, dir, kind string, stable *raftboltdb.BoltStore) logStore {
	t.Helper()
	l, err := openLogStore(dir, kind, 64<<20, stable, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func openStable(t *testing.T, raftDir string) *raftboltdb.BoltStore {
	t.Helper()
	s, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(raftDir, "raft.db")})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func testEntries(first, last uint64, tag string) []*raft.Log {
	var logs []*raft.Log
	for i := first; i <= last; i++ {
		logs = append(logs, &raft.Log{Index: i, Term: 3, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("%s-%d", tag, i))})
	}
	return logs
}

// checkEntries asserts s holds exactly first..last with data tag-<index>.
func checkEntries(t *testing.T, s raft.LogStore, first, last uint64, tag string) {
	t.Helper()
	f, _ := s.FirstIndex()
	l, _ := s.LastIndex()
	if f != first || l != last {
		t.Fatalf("log holds %d..%d, want %d..%d", f, l, first, last)
	}
	for i := first; i <= last && last > 0; i++ {
		var e raft.Log
		if err := s.GetLog(i, &e); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		if want := fmt.Sprintf("%s-%d", tag, i); string(e.Data) != want || e.Term != 3 {
			t.Fatalf("entry %d: data %q term %d, want %q term 3", i, e.Data, e.Term, want)
		}
	}
}

func TestLogStoreMovesEntriesBetweenBoltAndWAL(t *testing.T) {
	dir := t.TempDir()
	stable := openStable(t, dir)
	defer stable.Close()
	if err := stable.StoreLogs(testEntries(5, 40, "v1")); err != nil {
		t.Fatal(err)
	}
	if err := stable.SetUint64([]byte("CurrentTerm"), 3); err != nil {
		t.Fatal(err)
	}

	// An upgrade: the log in raft.db moves into the WAL once.
	w := mustOpenLogStore(t, dir, LogStoreWAL, stable)
	checkEntries(t, w, 5, 40, "v1")
	checkEntries(t, stable, 0, 0, "")
	if term, _ := stable.GetUint64([]byte("CurrentTerm")); term != 3 {
		t.Fatalf("stable store lost the term: %d", term)
	}
	if err := w.StoreLogs(testEntries(41, 50, "v1")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	w = mustOpenLogStore(t, dir, LogStoreWAL, stable)
	checkEntries(t, w, 5, 50, "v1")
	w.Close()

	// And back with --raft-log-store=boltdb: the WAL's entries return to raft.db.
	b := mustOpenLogStore(t, dir, LogStoreBoltDB, stable)
	checkEntries(t, b, 5, 50, "v1")
	if _, err := os.Stat(filepath.Join(dir, walDir)); !os.IsNotExist(err) {
		t.Fatalf("wal dir still there after moving back: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	checkEntries(t, stable, 5, 50, "v1") // closing the boltdb log leaves raft.db open

	if _, err := openLogStore(dir, "leveldb", 64<<20, stable, hclog.NewNullLogger()); err == nil {
		t.Fatal("unknown log store kind accepted")
	}
}

// TestLogStoreRecoversInterruptedMigration: a crash may leave a partial
// copy (wal.tmp, or raft.db entries beside a complete WAL); the WAL, once
// renamed into place, is the log.
func TestLogStoreRecoversInterruptedMigration(t *testing.T) {
	dir := t.TempDir()
	stable := openStable(t, dir)
	defer stable.Close()
	w := mustOpenLogStore(t, dir, LogStoreWAL, stable)
	if err := w.StoreLogs(testEntries(1, 20, "wal")); err != nil {
		t.Fatal(err)
	}
	w.Close()
	// Crash after the copy into raft.db began, before the WAL was retired.
	if err := stable.StoreLogs(testEntries(1, 7, "partial")); err != nil {
		t.Fatal(err)
	}
	// And a partial copy the other way, never renamed into place.
	if err := os.MkdirAll(filepath.Join(dir, walTmpDir), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, walTmpDir, "junk"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}

	w = mustOpenLogStore(t, dir, LogStoreWAL, stable)
	checkEntries(t, w, 1, 20, "wal")
	checkEntries(t, stable, 0, 0, "")
	w.Close()
	if _, err := os.Stat(filepath.Join(dir, walTmpDir)); !os.IsNotExist(err) {
		t.Fatalf("partial migration left behind: %v", err)
	}

	// The same partial copy when going back to boltdb: redone from the WAL.
	if err := stable.StoreLogs(testEntries(1, 7, "partial")); err != nil {
		t.Fatal(err)
	}
	b := mustOpenLogStore(t, dir, LogStoreBoltDB, stable)
	checkEntries(t, b, 1, 20, "wal")
}

// TestNodeUpgradesBoltLogToWAL runs a cluster on the boltdb log, as the
// release before the WAL did, and restarts it on the WAL: every artifact
// stays, raft keeps its term and log, and new writes replicate.
func TestNodeUpgradesBoltLogToWAL(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) { c.LogStore = LogStoreBoltDB })
	_, l := tc.leader()
	ctx := context.Background()
	want := map[string][]byte{}
	store := func(nd *Node, name string, seed int64) {
		t.Helper()
		a := art(name, "a.tar.gz")
		content := randomBytes(seed, storage.MaxChunkSize+int(seed))
		if err := nd.Store(ctx, &a, bytes.NewReader(content)); err != nil {
			t.Fatal(err)
		}
		want[a.Path()] = content
	}
	store(l, "before", 1)
	tc.converge()
	lastBefore := l.raft.LastIndex()

	for i := range tc.nodes {
		tc.stop(i)
		tc.cfgs[i].LogStore = LogStoreWAL
		tc.start(i)
		if _, err := os.Stat(filepath.Join(tc.cfgs[i].Dir, "raft", walDir)); err != nil {
			t.Fatalf("%s: no wal after the upgrade: %v", tc.cfgs[i].NodeID, err)
		}
		if last, _ := tc.nodes[i].logStore.LastIndex(); last < lastBefore {
			t.Fatalf("%s: wal ends at %d, the boltdb log ended at %d", tc.cfgs[i].NodeID, last, lastBefore)
		}
		if last, _ := tc.nodes[i].stable.LastIndex(); last != 0 {
			t.Fatalf("%s: raft.db still holds entries up to %d", tc.cfgs[i].NodeID, last)
		}
	}
	_, l = tc.leader()
	store(l, "after", 2)
	tc.converge()
	for _, nd := range tc.nodes {
		for p, content := range want {
			a, _ := storage.ParsePath(p)
			if got := readAll(t, nd, a); !bytes.Equal(got, content) {
				t.Fatalf("%s serves wrong bytes for %s after the upgrade", nd.cfg.NodeID, p)
			}
		}
	}
}

// TestWALTailTruncationSurvivesRestart: raft clears a log suffix when a
// deposed leader rejoins; the WAL must open again afterwards (raft-wal
// v0.4.0 sealed the truncated tail without its index block, and the next
// start failed on every read of it).
func TestWALTailTruncationSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	stable := openStable(t, dir)
	defer stable.Close()
	w := mustOpenLogStore(t, dir, LogStoreWAL, stable)
	if err := w.StoreLogs(testEntries(1, 93, "v1")); err != nil {
		t.Fatal(err)
	}
	if err := w.DeleteRange(92, 93); err != nil {
		t.Fatal(err)
	}
	if err := w.StoreLogs(testEntries(92, 95, "v1")); err != nil {
		t.Fatal(err)
	}
	w.Close()
	w = mustOpenLogStore(t, dir, LogStoreWAL, stable)
	defer w.Close()
	checkEntries(t, w, 1, 95, "v1")
}

// TestSealedWALSegmentsLetTheirBuffersGo appends chunk-sized entries
// across several segments: the sealed ones must not keep their writers'
// append buffers (raft-wal's own filer keeps one per sealed segment, here
// 4 MiB each), and every entry still reads back, before and after a reopen.
func TestSealedWALSegmentsLetTheirBuffersGo(t *testing.T) {
	const (
		entrySize = storage.MaxChunkSize
		perAppend = 7
		appends   = 24
	)
	dir := t.TempDir()
	stable := openStable(t, dir)
	defer stable.Close()
	open := func() logStore {
		// The smallest segments: 8 MiB, two or three appends each.
		l, err := openLogStore(dir, LogStoreWAL, 4*minSegmentBytes, stable, hclog.NewNullLogger())
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	l := open()
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	idx := uint64(1)
	for range appends {
		var logs []*raft.Log
		for range perAppend {
			d := bytes.Repeat([]byte{byte(idx)}, entrySize)
			binary.BigEndian.PutUint64(d, idx)
			logs = append(logs, &raft.Log{Index: idx, Term: 1, Type: raft.LogCommand, Data: d})
			idx++
		}
		if err := l.StoreLogs(logs); err != nil {
			t.Fatal(err)
		}
	}
	grown := int64(heap()) - int64(before)
	segments, _ := filepath.Glob(filepath.Join(dir, walDir, "*.wal"))
	if len(segments) < 6 {
		t.Fatalf("%d segment files: the test did not seal enough segments", len(segments))
	}
	t.Logf("heap grew %d KiB over %d segments", grown>>10, len(segments))
	// The tail's writer keeps its buffer (4 MiB); sealed segments keep none.
	if grown > 12<<20 {
		t.Errorf("heap grew %d MiB over %d segments: sealed segments keep their append buffers", grown>>20, len(segments))
	}
	check := func(s raft.LogStore) {
		t.Helper()
		for i := uint64(1); i < idx; i++ {
			var e raft.Log
			if err := s.GetLog(i, &e); err != nil {
				t.Fatalf("entry %d: %v", i, err)
			}
			if len(e.Data) != entrySize || binary.BigEndian.Uint64(e.Data) != i || e.Data[entrySize-1] != byte(i) {
				t.Fatalf("entry %d: %d bytes that are not its own", i, len(e.Data))
			}
		}
	}
	check(l)
	l.Close()
	l = open()
	defer l.Close()
	check(l)
}
