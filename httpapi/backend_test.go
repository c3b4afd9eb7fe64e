package httpapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/opencontainers/go-digest"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/fsm"
	"github.com/sourceraft/sourceraft/storage"
)

// memBackend is a unit-test double for one replica's Raft side: which
// artifacts are applied (some only after a delay), the status and peers.
// The blobs are stored in a real FSM, fed the commands a leader would
// send, so downloads read real blob files that a test can corrupt.
type memBackend struct {
	id  string
	f   *fsm.FSM
	dir string

	mu      sync.Mutex
	index   uint64
	arts    map[string]memArtifact
	pending map[string]bool
	changed chan struct{}
	status  clusterapi.Status
	ready   error
	peers   []clusterapi.Peer
	// asked records every path the HTTP layer handed to the backend.
	asked []string

	// objects stands in for the object store remote blobs rest in: their
	// bytes by digest. remoteErr fails OpenRemote; presignBase, when set,
	// answers it with a redirect under that URL.
	objects     map[string][]byte
	remoteErr   error
	presignBase string
	remoteOpens atomic.Int64

	lookups atomic.Int64
	stores  atomic.Int64
	// algo, when set, is the --artifact-digest-algo commits are made with.
	algo digest.Algorithm
}

type memArtifact struct {
	a    storage.Artifact
	data []byte
}

var _ Backend = (*memBackend)(nil)

func newMemBackend(t testing.TB, id string) *memBackend {
	dir := t.TempDir()
	f, err := fsm.Open(filepath.Join(dir, "fsm.db"), fsm.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &memBackend{
		id:      id,
		f:       f,
		dir:     dir,
		arts:    map[string]memArtifact{},
		objects: map[string][]byte{},
		pending: map[string]bool{},
		changed: make(chan struct{}),
		status:  clusterapi.Status{NodeID: id, State: "Leader", LeaderID: id},
	}
}

// applyLocked feeds one command to the FSM at the next index.
func (b *memBackend) applyLocked(cmd []byte) {
	b.index++
	if res := b.f.Apply(&raft.Log{Index: b.index, Type: raft.LogCommand, Data: cmd}); res != nil {
		panic(fmt.Sprintf("apply: %v", res))
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
	if b.algo != "" && b.algo != digest.SHA256 {
		a.Digest, a.BlobDigest = b.algo.FromBytes(data).String(), a.Digest
	}
	a.Size = int64(len(data))
	a.LastUpdateTime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	id := fmt.Sprintf("upload-%d", b.index)
	var seq uint32
	for off := 0; off < len(data) || seq == 0; seq++ {
		n := min(storage.MaxChunkSize, len(data)-off)
		b.applyLocked(fsm.EncodeChunk(fsm.Chunk{UploadID: id, Seq: seq, Data: data[off : off+n]}))
		off += n
	}
	b.applyLocked(fsm.EncodeCommit(fsm.Commit{UploadID: id, Chunks: seq, Artifact: a}))
	b.arts[p] = memArtifact{a: a, data: data}
	delete(b.pending, p)
	close(b.changed)
	b.changed = make(chan struct{})
	return a
}

// putRemote commits an artifact whose blob rests in the object store.
func (b *memBackend) putRemote(p string, data []byte) storage.Artifact {
	b.mu.Lock()
	defer b.mu.Unlock()
	a, err := storage.ParsePath(p)
	if err != nil {
		panic(err)
	}
	a.Revision, a.Digest, a.Size = "main@sha1:0123", digestOf(data), int64(len(data))
	a.LastUpdateTime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	b.objects[a.Blob()] = data
	b.applyLocked(fsm.EncodeCommitRemote(fsm.RemoteCommit{Artifact: a}))
	b.arts[p] = memArtifact{a: a, data: data}
	return a
}

func (b *memBackend) setRemote(err error, presignBase string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.remoteErr, b.presignBase = err, presignBase
}

func (b *memBackend) OpenRemote(_ context.Context, c *fsm.Content) (string, error) {
	b.remoteOpens.Add(1)
	b.mu.Lock()
	data, ok := b.objects[c.Artifact.Blob()]
	err, base := b.remoteErr, b.presignBase
	b.mu.Unlock()
	switch {
	case err != nil:
		return "", err
	case !ok:
		return "", storage.ErrNotFound
	case base != "":
		return base + "/" + c.Artifact.Blob(), nil
	}
	fh, err := os.CreateTemp(b.dir, "object")
	if err != nil {
		return "", err
	}
	if _, err := fh.Write(data); err != nil {
		return "", err
	}
	if _, err := fh.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	return "", c.Attach(fh)
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

// corrupt flips the byte at off in the blob file of the artifact at p.
func (b *memBackend) corrupt(p string, off int64) {
	b.mu.Lock()
	blob := b.arts[p].a.Blob()
	b.mu.Unlock()
	name := filepath.Join(b.dir, "blobs", "sha256", strings.TrimPrefix(blob, "sha256:"))
	fh, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		panic(err)
	}
	defer fh.Close()
	c := make([]byte, 1)
	if _, err := fh.ReadAt(c, off); err != nil {
		panic(err)
	}
	c[0] ^= 0xff
	if _, err := fh.WriteAt(c, off); err != nil {
		panic(err)
	}
}

func (b *memBackend) setStatus(f func(*clusterapi.Status)) {
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

func (b *memBackend) registered() []clusterapi.Peer {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]clusterapi.Peer(nil), b.peers...)
}

func (b *memBackend) leaderLocked() bool { return b.status.LeaderID == b.id }

func (b *memBackend) OpenArtifact(k storage.Key) (*fsm.Content, error) {
	b.lookups.Add(1)
	b.mu.Lock()
	b.asked = append(b.asked, k.String())
	_, ok := b.arts[k.String()]
	b.mu.Unlock()
	if !ok {
		return nil, storage.ErrNotFound
	}
	return b.f.Open(k)
}

func (b *memBackend) WaitFor(ctx context.Context, k storage.Key) (*fsm.Content, error) {
	p := k.String()
	for {
		b.mu.Lock()
		b.asked = append(b.asked, p)
		if _, ok := b.arts[p]; ok {
			b.mu.Unlock()
			return b.f.Open(k)
		}
		if !b.pending[p] {
			b.mu.Unlock()
			return nil, storage.ErrNotFound
		}
		ch := b.changed
		b.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-ch:
		}
	}
}

func (b *memBackend) OnCorrupt(fn func(string)) { b.f.OnCorrupt(fn) }

func (b *memBackend) RepairBlob(digest string, size int64, r io.Reader) error {
	return b.f.Repair(digest, size, r)
}

func (b *memBackend) ArtifactWithDigest(digest string) (storage.Artifact, error) {
	return b.f.ArtifactWithDigest(digest)
}

func (b *memBackend) Status() clusterapi.Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.status
	s.Peers = append([]clusterapi.Peer(nil), b.status.Peers...)
	s.Artifacts = len(b.arts)
	return s
}

func (b *memBackend) ContentHash() (clusterapi.ContentHash, error) {
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
	return clusterapi.ContentHash{NodeID: b.id, Hash: hex.EncodeToString(h.Sum(nil))}, nil
}

func (b *memBackend) Ready() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ready
}

func (b *memBackend) RegisterPeer(_ context.Context, p clusterapi.Peer) error {
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
	k, err := storage.KeyOf(a)
	if err != nil {
		return nil, err
	}
	c, err := b.OpenArtifact(k)
	if err != nil {
		return nil, err
	}
	return io.NopCloser(c.Reader()), nil
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
	b.applyLocked(fsm.EncodeDeleteArtifacts([]string{a.Path()}))
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
