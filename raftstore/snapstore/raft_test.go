package snapstore

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// blobFSM keeps each applied command as an immutable content-addressed
// file, as the artifact FSM keeps blobs. Its snapshot is a header naming
// the files and their sizes, then the files themselves, linked when the
// sink can.
type blobFSM struct {
	dir   string
	mu    sync.Mutex
	names []string // in apply order
}

func (f *blobFSM) Apply(l *raft.Log) any {
	sum := sha256.Sum256(l.Data)
	name := hex.EncodeToString(sum[:])
	if err := os.WriteFile(filepath.Join(f.dir, name), l.Data, 0o640); err != nil {
		return err
	}
	f.mu.Lock()
	f.names = append(f.names, name)
	f.mu.Unlock()
	return nil
}

func (f *blobFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var header bytes.Buffer
	binary.Write(&header, binary.BigEndian, uint32(len(f.names)))
	parts := []part{{inline: nil}}
	for _, n := range f.names {
		fi, err := os.Stat(filepath.Join(f.dir, n))
		if err != nil {
			return nil, err
		}
		header.WriteString(n)
		binary.Write(&header, binary.BigEndian, fi.Size())
		parts = append(parts, part{file: filepath.Join(f.dir, n)})
	}
	parts[0].inline = header.Bytes()
	return synthSnapshot{parts: parts}, nil
}

func (f *blobFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	r := bufio.NewReader(rc)
	var count uint32
	if err := binary.Read(r, binary.BigEndian, &count); err != nil {
		return err
	}
	type entry struct {
		name string
		size int64
	}
	var entries []entry
	for range count {
		name := make([]byte, 64)
		var size int64
		if _, err := io.ReadFull(r, name); err != nil {
			return err
		}
		if err := binary.Read(r, binary.BigEndian, &size); err != nil {
			return err
		}
		entries = append(entries, entry{string(name), size})
	}
	var names []string
	for _, e := range entries {
		data := make([]byte, e.size)
		if _, err := io.ReadFull(r, data); err != nil {
			return fmt.Errorf("blob %s: %w", e.name, err)
		}
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != e.name {
			return fmt.Errorf("blob %s arrived with other bytes", e.name)
		}
		if err := os.WriteFile(filepath.Join(f.dir, e.name), data, 0o640); err != nil {
			return err
		}
		names = append(names, e.name)
	}
	if _, err := r.ReadByte(); err != io.EOF {
		return fmt.Errorf("bytes after the last blob (%v)", err)
	}
	f.mu.Lock()
	f.names = names
	f.mu.Unlock()
	return nil
}

func (f *blobFSM) state() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.names)
}

type testNode struct {
	id    raft.ServerID
	raft  *raft.Raft
	fsm   *blobFSM
	snaps *Store
	trans *raft.NetworkTransport
}

func startNode(t *testing.T, id string) *testNode {
	t.Helper()
	dir := t.TempDir()
	blobs := filepath.Join(dir, "blobs")
	if err := os.Mkdir(blobs, 0o750); err != nil {
		t.Fatal(err)
	}
	logs, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db")})
	if err != nil {
		t.Fatal(err)
	}
	snaps := newStore(t, dir, 1)
	trans, err := raft.NewTCPTransportWithLogger("127.0.0.1:0", nil, 3, 5*time.Second, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	cfg := raft.DefaultConfig()
	cfg.LocalID = raft.ServerID(id)
	cfg.Logger = hclog.NewNullLogger()
	cfg.HeartbeatTimeout = 300 * time.Millisecond
	cfg.ElectionTimeout = 300 * time.Millisecond
	cfg.LeaderLeaseTimeout = 150 * time.Millisecond
	cfg.TrailingLogs = 1
	cfg.SnapshotThreshold = 1 << 30
	cfg.SnapshotInterval = time.Hour
	fsm := &blobFSM{dir: blobs}
	r, err := raft.NewRaft(cfg, fsm, logs, logs, snaps, trans)
	if err != nil {
		t.Fatal(err)
	}
	n := &testNode{id: cfg.LocalID, raft: r, fsm: fsm, snaps: snaps, trans: trans}
	t.Cleanup(func() {
		r.Shutdown().Error()
		trans.Close()
		logs.Close()
	})
	return n
}

// TestFollowersCatchUpFromLinkedSnapshot: a leader whose snapshot links
// its blob files sends it to two new followers with InstallSnapshot; they
// receive the plain stream and restore the same state.
func TestFollowersCatchUpFromLinkedSnapshot(t *testing.T) {
	a := startNode(t, "a")
	if err := a.raft.BootstrapCluster(raft.Configuration{Servers: []raft.Server{
		{Suffrage: raft.Voter, ID: a.id, Address: a.trans.LocalAddr()},
	}}).Error(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for a.raft.State() != raft.Leader {
		if time.Now().After(deadline) {
			t.Fatal("a never became leader")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i := range 5 {
		if err := a.raft.Apply(randomBytes(int64(100+i), 100000+i), 5*time.Second).Error(); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	// The leader's snapshot holds its blobs by link.
	for _, n := range a.fsm.state() {
		if got := nlink(t, filepath.Join(a.fsm.dir, n)); got != 2 {
			t.Fatalf("leader blob %s has %d links, want 2", n, got)
		}
	}
	if err := a.raft.Apply(randomBytes(200, 1234), 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}

	followers := []*testNode{startNode(t, "b"), startNode(t, "c")}
	for _, f := range followers {
		if err := a.raft.AddVoter(f.id, f.trans.LocalAddr(), 0, 10*time.Second).Error(); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.raft.Barrier(10 * time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	want := a.fsm.state()
	for _, f := range followers {
		deadline := time.Now().Add(15 * time.Second)
		for !slices.Equal(f.fsm.state(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("%s has %d blobs, want %d", f.id, len(f.fsm.state()), len(want))
			}
			time.Sleep(50 * time.Millisecond)
		}
		if f.raft.Stats()["last_snapshot_index"] == "0" {
			t.Fatalf("%s caught up without a snapshot: the test did not exercise InstallSnapshot", f.id)
		}
		for _, n := range want {
			if !bytes.Equal(mustRead(t, filepath.Join(f.fsm.dir, n)), mustRead(t, filepath.Join(a.fsm.dir, n))) {
				t.Fatalf("%s: blob %s differs from the leader's", f.id, n)
			}
		}
		// The received snapshot is stored inline: the follower's store
		// holds a complete copy, not links into the leader's disk.
		metas, err := f.snaps.List()
		if err != nil || len(metas) != 1 {
			t.Fatalf("%s: %d snapshots, %v", f.id, len(metas), err)
		}
		m, err := f.snaps.readMeta(metas[0].ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, seg := range m.Segments {
			if seg.Linked {
				t.Fatalf("%s: received snapshot has a linked segment %s", f.id, seg.Name)
			}
		}
	}
}
