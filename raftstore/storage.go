package raftstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sourceraft/sourceraft/fsm"
	"github.com/sourceraft/sourceraft/metrics"
	"github.com/sourceraft/sourceraft/storage"
)

// applyWindow is how many chunk proposals are in flight at once: enough to
// let raft batch them into one log write and one AppendEntries, few enough
// that the leader holds at most 4 MiB of a blob at any time.
const applyWindow = 8

var chunkPool = sync.Pool{New: func() any { b := make([]byte, storage.MaxChunkSize); return &b }}

// Store streams content through the log in chunks under a fresh upload id,
// then commits the artifact in one command. It returns once the commit is
// applied on this (leader) node, which implies a quorum has it. When
// a.Digest is set (in any algorithm this binary knows), content hashing
// to anything else is rejected before the commit. On success a.Digest (in
// the configured algorithm), a.BlobDigest and a.Size describe the stored
// bytes, all hashed in the one pass that proposes them.
func (n *Node) Store(ctx context.Context, a *storage.Artifact, content io.Reader) (err error) {
	defer func(start time.Time) { metrics.ObserveStorage("store", start, err) }(time.Now())
	if _, err := storage.ParseWritePath(a.Path()); err != nil {
		return err
	}
	if a.IsAlias() {
		return fmt.Errorf("%w: %s is the name every replica serves %s's current artifact under", storage.ErrInvalidPath, a.File, a.Object())
	}
	sums, err := newContentDigests(n.cfg.DigestAlgorithm, a.Digest)
	if err != nil {
		return fmt.Errorf("store %s: %w", a.Path(), err)
	}
	r, err := n.leaderRaft()
	if err != nil {
		return err
	}
	if n.cfg.Blobs != nil {
		return n.storeRemote(ctx, r, a, content, sums)
	}
	id, err := newUploadID()
	if err != nil {
		return err
	}
	n.uploads.add(id)
	defer n.uploads.remove(id)

	chunks, size, err := n.proposeChunks(ctx, r, id, content, sums)
	if err == nil {
		var stored storage.Artifact
		if stored, err = n.described(*a, size, sums); err == nil {
			if err = n.propose(ctx, r, fsm.EncodeCommit(fsm.Commit{UploadID: id, Chunks: chunks, Artifact: stored})); err == nil {
				*a = stored
				return nil
			}
		}
	}
	n.aborted(a, id, err)
	// Best effort: a later leader expires the upload anyway.
	if abortErr := n.propose(context.WithoutCancel(ctx), r, fsm.EncodeAbortUploads([]string{id})); abortErr != nil {
		n.log.Warn("abort upload", "upload", id, "error", abortErr)
	}
	return fmt.Errorf("store %s: %w", a.Path(), err)
}

// described is a with the digests and size of the size bytes sums hashed,
// checked against what the caller declared.
func (n *Node) described(a storage.Artifact, size int64, sums contentDigests) (storage.Artifact, error) {
	if a.ExpectedSize > 0 && size != a.ExpectedSize {
		return a, fmt.Errorf("%w: %d bytes of the %d declared", storage.ErrIncomplete, size, a.ExpectedSize)
	}
	stored := a
	if err := sums.artifact(&stored, n.cfg.DigestAlgorithm, a.Digest); err != nil {
		return a, err
	}
	stored.Size = size
	if stored.LastUpdateTime.IsZero() {
		stored.LastUpdateTime = time.Now().UTC().Truncate(time.Second)
	}
	return stored, nil
}

// aborted counts and logs an upload that committed nothing.
func (n *Node) aborted(a *storage.Artifact, id string, err error) {
	reason := abortReason(err)
	metrics.UploadsAborted.WithLabelValues(reason).Inc()
	n.log.Warn("upload aborted, nothing committed", "path", a.Path(), "upload", id, "reason", reason, "error", err)
}

// abortReason is the label an aborted upload is counted under.
func abortReason(err error) string {
	switch {
	case errors.Is(err, storage.ErrTooLarge):
		return "too_large"
	case errors.Is(err, storage.ErrIncomplete):
		return "incomplete"
	case errors.Is(err, storage.ErrDigestMismatch):
		return "digest_mismatch"
	case errors.Is(err, ErrNotLeader):
		return "not_leader"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "canceled"
	}
	return "other"
}

// proposeChunks reads content chunk by chunk, writing it to sums and
// proposing each with a bounded number in flight, and returns the chunk
// count and size.
func (n *Node) proposeChunks(ctx context.Context, r *raft.Raft, id string, content io.Reader, sums io.Writer) (uint32, int64, error) {
	bufp := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(bufp)
	buf := *bufp
	started := time.Now().UnixNano()
	var (
		size     int64
		seq      uint32
		inflight []raft.ApplyFuture
	)
	wait := func(f raft.ApplyFuture) error {
		if err := f.Error(); err != nil {
			return mapRaftErr(err)
		}
		if rerr, ok := f.Response().(error); ok && rerr != nil {
			return rerr
		}
		return nil
	}
	for {
		if err := ctx.Err(); err != nil {
			return 0, 0, err
		}
		k, end, rerr := readChunk(content, buf)
		if rerr != nil {
			return 0, 0, rerr
		}
		size += int64(k)
		if n.cfg.MaxArtifactSize > 0 && size > n.cfg.MaxArtifactSize {
			return 0, 0, fmt.Errorf("%w (%d bytes)", storage.ErrTooLarge, n.cfg.MaxArtifactSize)
		}
		// An empty artifact still gets one (empty) chunk so the upload exists.
		if k > 0 || seq == 0 {
			_, _ = sums.Write(buf[:k])
			cmd := fsm.EncodeChunk(fsm.Chunk{UploadID: id, Seq: seq, StartedAt: started, Data: buf[:k]})
			inflight = append(inflight, r.Apply(cmd, n.cfg.ApplyTimeout))
			seq++
			if len(inflight) == applyWindow {
				if err := wait(inflight[0]); err != nil {
					return 0, 0, err
				}
				inflight = inflight[1:]
			}
		}
		if end {
			break
		}
	}
	for _, f := range inflight {
		if err := wait(f); err != nil {
			return 0, 0, err
		}
	}
	return seq, size, nil
}

// readChunk fills buf from content and reports whether the content ended.
// Only a clean io.EOF from content ends it: io.ReadFull would report the
// reader's own io.ErrUnexpectedEOF (an HTTP body cut short, a chunked body
// without its last chunk) exactly as it reports a short last chunk, and
// the truncated bytes would commit. Any other error, a wrapped io.EOF
// included, fails with storage.ErrIncomplete.
func readChunk(content io.Reader, buf []byte) (int, bool, error) {
	n := 0
	for n < len(buf) {
		k, err := content.Read(buf[n:])
		n += k
		if err == io.EOF {
			return n, true, nil
		}
		if err != nil {
			return n, false, fmt.Errorf("%w: read content: %w", storage.ErrIncomplete, err)
		}
	}
	return n, false, nil
}

// Retrieve opens the artifact's content in the local store.
func (n *Node) Retrieve(ctx context.Context, a storage.Artifact) (io.ReadCloser, error) {
	k, err := storage.KeyOf(a)
	if err != nil {
		return nil, err
	}
	c, err := n.fsm.Open(k)
	if err != nil {
		return nil, err
	}
	if c.Remote {
		if err := n.attachRemote(ctx, c); err != nil {
			return nil, err
		}
	}
	return contentReader{c.Reader(), c}, nil
}

type contentReader struct {
	io.Reader
	io.Closer
}

// Exists reports whether the artifact is committed and applied locally.
func (n *Node) Exists(_ context.Context, a storage.Artifact) (bool, error) {
	k, err := storage.KeyOf(a)
	if err != nil {
		return false, err
	}
	_, err = n.fsm.Artifact(k)
	if errors.Is(err, storage.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// Delete removes the artifact on every replica.
func (n *Node) Delete(ctx context.Context, a storage.Artifact) (err error) {
	defer func(start time.Time) { metrics.ObserveStorage("delete", start, err) }(time.Now())
	r, err := n.leaderRaft()
	if err != nil {
		return err
	}
	k, err := storage.KeyOf(a)
	if err != nil {
		return err
	}
	if _, err := n.fsm.Artifact(k); err != nil {
		return fmt.Errorf("delete %s: %w", a.Path(), err)
	}
	return n.propose(ctx, r, fsm.EncodeDeleteArtifacts([]string{a.Path()}))
}

// List returns the locally applied artifacts matching f.
func (n *Node) List(_ context.Context, f storage.Filter) ([]storage.Artifact, error) {
	return n.fsm.List(f)
}

// GarbageCollect chooses the victims of p on the leader, with the leader's
// clock, and deletes them in one replicated command so every replica
// removes the same set.
func (n *Node) GarbageCollect(ctx context.Context, p storage.GCPolicy) (err error) {
	defer func(start time.Time) { metrics.ObserveStorage("gc", start, err) }(time.Now())
	r, err := n.leaderRaft()
	if err != nil {
		return err
	}
	var filter storage.Filter
	if p.Current != nil {
		filter = storage.Filter{Kind: p.Current.Kind, Namespace: p.Current.Namespace, Name: p.Current.Name}
	}
	all, err := n.fsm.List(filter)
	if err != nil {
		return fmt.Errorf("gc: list artifacts: %w", err)
	}
	victims := storage.SelectGarbage(all, p, time.Now())
	if len(victims) == 0 {
		return nil
	}
	paths := make([]string, len(victims))
	for i, v := range victims {
		paths[i] = v.Path()
	}
	if err := n.propose(ctx, r, fsm.EncodeDeleteArtifacts(paths)); err != nil {
		return fmt.Errorf("gc: delete %d artifacts: %w", len(paths), err)
	}
	return nil
}

// freshReadWait bounds how long a read waits for this replica to apply
// the commands its log already holds (see catchUp): long enough for a
// leader's next AppendEntries to say they are committed and for the apply,
// short enough that a replica whose apply is stuck still serves promptly.
const freshReadWait = time.Second

// OpenArtifact looks up the locally applied artifact at k and opens its
// content in one call, once the commands in this replica's log are applied.
func (n *Node) OpenArtifact(k storage.Key) (*fsm.Content, error) {
	n.catchUp(freshReadWait)
	return n.fsm.Open(k)
}

// catchUp waits, up to timeout, until the store reflects every command in
// this replica's log. A path can be stored again with other content (the
// same revision under new ignore rules): a follower that holds the new
// commit in its log but has not applied it must not serve the old bytes
// under the digest the status now names. A replica without a leader, or one
// whose store cannot commit, serves what it has at once: what its log holds
// past the commit index may never be committed.
func (n *Node) catchUp(timeout time.Duration) {
	r := n.raftOrNil()
	if r == nil {
		return
	}
	// The common case, nothing unapplied, costs two index reads per request.
	applied, last := n.fsm.AppliedIndex(), r.LastIndex()
	if last <= applied || n.fsm.Err() != nil {
		return
	}
	if _, id := r.LeaderWithID(); id == "" {
		return
	}
	if target := n.lastCommandIndex(last, applied); target > applied {
		_ = n.WaitForAppliedIndex(target, timeout) // on timeout, serve what is here
	}
}

// WaitFor blocks until the artifact at k is applied locally and opens it,
// or this replica has applied everything that was committed when it was
// asked and still lacks it, or ctx ends. The target is fixed by what was
// known then: under a steady stream of uploads there is always a newer
// entry, and an artifact that is gone must be answered 404 all the same
// (the chaos suite saw every replica hold a collected artifact's request
// for the whole 5 s). A leader knows what is committed; a follower also
// counts the commands its log holds (a leader that just died may have
// committed them, and the next one will) and, for freshReadWait, what its
// leader says is committed, so an artifact committed a moment ago on the
// leader is waited for.
func (n *Node) WaitFor(ctx context.Context, k storage.Key) (*fsm.Content, error) {
	r := n.raftOrNil()
	if r == nil {
		return nil, ErrNotOpen
	}
	target := r.CommitIndex()
	var learnUntil time.Time
	if r.State() != raft.Leader {
		target = max(target, r.LastIndex())
		learnUntil = time.Now().Add(freshReadWait)
	}
	for {
		ch := n.fsm.Changed()
		c, err := n.fsm.Open(k)
		if !errors.Is(err, storage.ErrNotFound) {
			return c, err
		}
		applied := n.appliedIndex(r)
		if time.Now().Before(learnUntil) {
			target = max(target, r.CommitIndex())
		}
		if applied >= n.lastCommandIndex(target, applied) {
			return nil, err
		}
		select {
		case <-ch:
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for %s: %w", k, ctx.Err())
		}
	}
}

// lastCommandIndex is the index of the last command entry at or below
// upTo, or applied if none lies above it. Raft hands the FSM only
// commands: a no-op a new leader appends, a barrier or a configuration
// change never raise the FSM's applied index, so waiting for the FSM to
// reach the log's last index could wait for the next command.
func (n *Node) lastCommandIndex(upTo, applied uint64) uint64 {
	var l raft.Log
	for i := upTo; i > applied; i-- {
		if err := n.logBytes.GetLog(i, &l); err != nil || l.Type == raft.LogCommand {
			return i // unreadable: assume a command, and wait
		}
	}
	return applied
}

// appliedIndex is the last log index this replica's store reflects: the
// FSM's own, or the commit index when only entries the FSM never sees lie
// between the two.
func (n *Node) appliedIndex(r *raft.Raft) uint64 {
	applied, commit := n.fsm.AppliedIndex(), r.CommitIndex()
	if commit > applied && n.lastCommandIndex(commit, applied) == applied {
		return commit
	}
	return applied
}

// Barrier returns once every entry committed before it is applied here:
// what a new leader waits for before it acts on the store. Leader only.
func (n *Node) Barrier(timeout time.Duration) error {
	r := n.raftOrNil()
	if r == nil {
		return ErrNotOpen
	}
	if err := r.Barrier(timeout).Error(); err != nil {
		return mapRaftErr(err)
	}
	return nil
}

// propose applies one command and waits for its result.
func (n *Node) propose(ctx context.Context, r *raft.Raft, cmd []byte) error {
	timeout := n.cfg.ApplyTimeout
	if d, ok := ctx.Deadline(); ok && time.Until(d) < timeout {
		timeout = time.Until(d)
	}
	f := r.Apply(cmd, timeout)
	if err := f.Error(); err != nil {
		return mapRaftErr(err)
	}
	if rerr, ok := f.Response().(error); ok && rerr != nil {
		return rerr
	}
	return nil
}

func (n *Node) leaderRaft() (*raft.Raft, error) {
	r := n.raftOrNil()
	if r == nil {
		return nil, ErrNotOpen
	}
	if r.State() != raft.Leader {
		return nil, ErrNotLeader
	}
	return r, nil
}

func mapRaftErr(err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return fmt.Errorf("%w: %v", ErrNotLeader, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return fmt.Errorf("%w: %v", ErrNotOpen, err)
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("raft apply: %w: %v", ErrTimeout, err)
	}
	return fmt.Errorf("raft apply: %w", err)
}

func newUploadID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("upload id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// uploadSet is the uploads this node is streaming as leader: after a
// leadership change every other pending upload can never be committed.
type uploadSet struct {
	mu  sync.Mutex
	ids map[string]struct{}
}

func newUploadSet() *uploadSet { return &uploadSet{ids: map[string]struct{}{}} }

func (s *uploadSet) add(id string)    { s.mu.Lock(); s.ids[id] = struct{}{}; s.mu.Unlock() }
func (s *uploadSet) remove(id string) { s.mu.Lock(); delete(s.ids, id); s.mu.Unlock() }
func (s *uploadSet) has(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.ids[id]
	return ok
}
