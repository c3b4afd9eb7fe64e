package httpapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sourceraft/sourceraft/raftstore"
	"github.com/sourceraft/sourceraft/storage"
)

// memBackend is a unit-test double for one replica: committed artifacts
// in memory, blobs split into chunks that can be marked corrupt, and
// artifacts that become applied only after a delay.
type memBackend struct {
	id    string
	chunk int

	mu      sync.Mutex
	arts    map[string]memArtifact
	pending map[string]bool
	changed chan struct{}
	corrupt map[string]int
	status  raftstore.Status
	ready   error
	peers   []raftstore.Peer
	// asked records every path the HTTP layer handed to the backend.
	asked []string

	lookups atomic.Int64
	stores  atomic.Int64
}

type memArtifact struct {
	a    storage.Artifact
	data []byte
}

var _ Backend = (*memBackend)(nil)

func newMemBackend(id string) *memBackend {
	return &memBackend{
		id:      id,
		chunk:   64 << 10,
		arts:    map[string]memArtifact{},
		pending: map[string]bool{},
		changed: make(chan struct{}),
		corrupt: map[string]int{},
		status:  raftstore.Status{NodeID: id, State: "Leader", LeaderID: id},
	}
}

func digestOf(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// commitLocked makes an artifact visible and wakes WaitFor callers.
func (b *memBackend) commitLocked(p string, data []byte, rev string) storage.Artifact {
	a, err := storage.ParsePath(p)
	if err != nil {
		panic(err)
	}
	a.Revision = rev
	a.Digest = digestOf(data)
	a.Size = int64(len(data))
	a.LastUpdateTime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	b.arts[p] = memArtifact{a: a, data: data}
	delete(b.pending, p)
	close(b.changed)
	b.changed = make(chan struct{})
	return a
}

func (b *memBackend) put(p string, data []byte) storage.Artifact {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.commitLocked(p, data, "main@sha1:0123")
}

// putAfter simulates an artifact committed by the cluster but applied on
// this replica only after d.
func (b *memBackend) putAfter(p string, data []byte, d time.Duration) {
	b.mu.Lock()
	b.pending[p] = true
	b.mu.Unlock()
	time.AfterFunc(d, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.commitLocked(p, data, "late")
	})
}

func (b *memBackend) corruptChunk(p string, n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.corrupt[p] = n
}

func (b *memBackend) setStatus(f func(*raftstore.Status)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f(&b.status)
}

func (b *memBackend) setReady(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ready = err
}

func (b *memBackend) has(p string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.arts[p]
	return ok
}

func (b *memBackend) askedPaths() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.asked...)
}

func (b *memBackend) registered() []raftstore.Peer {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]raftstore.Peer(nil), b.peers...)
}

func (b *memBackend) leaderLocked() bool { return b.status.LeaderID == b.id }

func (b *memBackend) Lookup(p string) (storage.Artifact, error) {
	b.lookups.Add(1)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.asked = append(b.asked, p)
	if m, ok := b.arts[p]; ok {
		return m.a, nil
	}
	return storage.Artifact{}, storage.ErrNotFound
}

func (b *memBackend) OpenBlob(a storage.Artifact) (storage.Blob, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.asked = append(b.asked, a.Path())
	m, ok := b.arts[a.Path()]
	if !ok {
		return nil, storage.ErrNotFound
	}
	corrupt, ok := b.corrupt[a.Path()]
	if !ok {
		corrupt = -1
	}
	return &memBlob{data: m.data, chunk: b.chunk, corrupt: corrupt}, nil
}

func (b *memBackend) WaitFor(ctx context.Context, p string) (storage.Artifact, error) {
	for {
		b.mu.Lock()
		b.asked = append(b.asked, p)
		if m, ok := b.arts[p]; ok {
			b.mu.Unlock()
			return m.a, nil
		}
		if !b.pending[p] {
			b.mu.Unlock()
			return storage.Artifact{}, storage.ErrNotFound
		}
		ch := b.changed
		b.mu.Unlock()
		select {
		case <-ctx.Done():
			return storage.Artifact{}, ctx.Err()
		case <-ch:
		}
	}
}

func (b *memBackend) Status() raftstore.Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.status
	s.Peers = append([]raftstore.Peer(nil), b.status.Peers...)
	s.Artifacts = len(b.arts)
	return s
}

func (b *memBackend) ContentHash() (raftstore.ContentHash, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	paths := make([]string, 0, len(b.arts))
	for p := range b.arts {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	h := sha256.New()
	for _, p := range paths {
		fmt.Fprintf(h, "%s %s\n", p, b.arts[p].a.Digest)
	}
	return raftstore.ContentHash{NodeID: b.id, Hash: hex.EncodeToString(h.Sum(nil))}, nil
}

func (b *memBackend) Ready() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ready
}

func (b *memBackend) RegisterPeer(_ context.Context, p raftstore.Peer) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.leaderLocked() {
		return storage.ErrNotLeader
	}
	b.peers = append(b.peers, p)
	return nil
}

func (b *memBackend) RemovePeer(_ context.Context, id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.leaderLocked() {
		return storage.ErrNotLeader
	}
	kept := b.peers[:0]
	for _, p := range b.peers {
		if p.ID != id {
			kept = append(kept, p)
		}
	}
	b.peers = kept
	return nil
}

// Store reads the whole body before committing, so a failed or refused
// upload leaves nothing behind, as the real store's commit command does.
func (b *memBackend) Store(_ context.Context, a *storage.Artifact, r io.Reader) error {
	b.stores.Add(1)
	b.mu.Lock()
	leader := b.leaderLocked()
	b.mu.Unlock()
	if !leader {
		return storage.ErrNotLeader
	}
	// As raftstore's Store: only a clean end of content at its declared
	// length commits.
	data, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("store %s: %w: %w", a.Path(), storage.ErrIncomplete, err)
	}
	if a.ExpectedSize > 0 && int64(len(data)) != a.ExpectedSize {
		return fmt.Errorf("store %s: %w: %d of %d bytes", a.Path(), storage.ErrIncomplete, len(data), a.ExpectedSize)
	}
	got := digestOf(data)
	if a.Digest != "" && a.Digest != got {
		return fmt.Errorf("%w: want %s, got %s", storage.ErrDigestMismatch, a.Digest, got)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	*a = b.commitLocked(a.Path(), data, a.Revision)
	return nil
}

func (b *memBackend) Retrieve(_ context.Context, a storage.Artifact) (io.ReadCloser, error) {
	return b.OpenBlob(a)
}

func (b *memBackend) Exists(_ context.Context, a storage.Artifact) (bool, error) {
	return b.has(a.Path()), nil
}

func (b *memBackend) Delete(_ context.Context, a storage.Artifact) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.leaderLocked() {
		return storage.ErrNotLeader
	}
	if _, ok := b.arts[a.Path()]; !ok {
		return storage.ErrNotFound
	}
	delete(b.arts, a.Path())
	return nil
}

func (b *memBackend) List(_ context.Context, f storage.Filter) ([]storage.Artifact, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []storage.Artifact
	for _, m := range b.arts {
		if f.Match(m.a) {
			out = append(out, m.a)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path() < out[j].Path() })
	return out, nil
}

func (b *memBackend) GarbageCollect(context.Context, storage.GCPolicy) error { return nil }

// memBlob verifies chunk by chunk like the real blob: a corrupt chunk
// fails the read that reaches it, after the earlier chunks were returned.
type memBlob struct {
	data    []byte
	chunk   int
	corrupt int
	off     int64
}

func (m *memBlob) check(off int64) error {
	if int(off)/m.chunk == m.corrupt {
		return fmt.Errorf("chunk %d: %w", m.corrupt, storage.ErrCorrupt)
	}
	return nil
}

func (m *memBlob) chunkEnd(off int64) int64 {
	return min(int64((int(off)/m.chunk+1)*m.chunk), int64(len(m.data)))
}

func (m *memBlob) Read(p []byte) (int, error) {
	if m.off >= int64(len(m.data)) {
		return 0, io.EOF
	}
	if err := m.check(m.off); err != nil {
		return 0, err
	}
	n := copy(p, m.data[m.off:m.chunkEnd(m.off)])
	m.off += int64(n)
	return n, nil
}

func (m *memBlob) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += m.off
	case io.SeekEnd:
		offset += int64(len(m.data))
	default:
		return 0, fmt.Errorf("bad whence %d", whence)
	}
	if offset < 0 {
		return 0, fmt.Errorf("negative offset")
	}
	m.off = offset
	return offset, nil
}

func (m *memBlob) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for m.off < int64(len(m.data)) {
		if err := m.check(m.off); err != nil {
			return total, err
		}
		n, err := w.Write(m.data[m.off:m.chunkEnd(m.off)])
		total += int64(n)
		m.off += int64(n)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

func (m *memBlob) Size() int64  { return int64(len(m.data)) }
func (m *memBlob) Close() error { return nil }
