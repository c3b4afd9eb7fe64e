package raftstore

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sourceraft/sourceraft/fsm"
)

// uploadSweepInterval is how often the leader looks for uploads whose
// commit will never come.
const uploadSweepInterval = 30 * time.Second

// leadershipLoop runs the leader's duties while this node leads and tells
// the observers (the reconciler manager) about every change.
func (n *Node) leadershipLoop() {
	defer n.wg.Done()
	stopDuties := func() {}
	defer func() { stopDuties() }()
	for {
		select {
		case <-n.done:
			return
		case isLeader := <-n.notify:
			stopDuties()
			stopDuties = func() {}
			n.log.Info("leadership changed", "leader", isLeader)
			if isLeader {
				stopDuties = n.startDuties()
			}
			for _, fn := range n.observers {
				fn(isLeader)
			}
		}
	}
}

// startDuties runs leaderDuties until the returned function cancels it and
// waits for it to end.
func (n *Node) startDuties() func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.leaderDuties(ctx)
	}()
	return func() {
		cancel()
		<-done
	}
}

// leaderDuties first waits until every entry of earlier terms is applied,
// so uploads a previous leader was streaming are visible and known to be
// dead, then removes them and keeps sweeping expired ones.
func (n *Node) leaderDuties(ctx context.Context) {
	if err := n.raft.Barrier(n.cfg.ApplyTimeout).Error(); err != nil {
		n.log.Warn("leader barrier", "error", err)
		return
	}
	n.registerSelf(ctx)
	n.sweepUploads(ctx, true)
	n.sweepBlobStore(ctx, true)
	apDone := make(chan struct{})
	go func() {
		defer close(apDone)
		n.runAutopilot(ctx)
	}()
	defer func() { <-apDone }()
	sweep := time.NewTicker(uploadSweepInterval)
	defer sweep.Stop()
	var gc <-chan time.Time
	if n.cfg.GCInterval > 0 {
		t := time.NewTicker(n.cfg.GCInterval)
		defer t.Stop()
		gc = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-sweep.C:
			n.sweepUploads(ctx, false)
			n.sweepBlobStore(ctx, false)
		case <-gc:
			if err := n.GarbageCollect(ctx, n.cfg.Retention); err != nil {
				n.log.Warn("garbage collection", "error", err)
			}
			n.sweepBlobStore(ctx, false)
		}
	}
}

// sweepUploads aborts uploads nobody can commit: on gaining leadership all
// those this node is not streaming itself, afterwards those older than
// UploadTTL.
func (n *Node) sweepUploads(ctx context.Context, orphans bool) {
	uploads, err := n.fsm.Uploads()
	if err != nil {
		n.log.Warn("list uploads", "error", err)
		return
	}
	cutoff := time.Now().Add(-n.cfg.UploadTTL).UnixNano()
	var dead []string
	for _, u := range uploads {
		if n.uploads.has(u.ID) {
			continue
		}
		if orphans || u.StartedAt < cutoff {
			dead = append(dead, u.ID)
		}
	}
	if len(dead) == 0 {
		return
	}
	if err := n.propose(ctx, n.raft, fsm.EncodeAbortUploads(dead)); err != nil {
		n.log.Warn("abort dead uploads", "count", len(dead), "error", err)
		return
	}
	n.log.Info("aborted uploads without commit", "count", len(dead))
}

// sweepBlobStore runs SweepBlobStore, logging what fails: the next sweep
// tries again.
func (n *Node) sweepBlobStore(ctx context.Context, orphans bool) {
	if err := n.SweepBlobStore(ctx, orphans); err != nil && ctx.Err() == nil {
		n.log.Warn("object store sweep", "error", err)
	}
}

// maybeSnapshot snapshots once the log has grown by SnapshotBytes since
// the last snapshot, so the log kept on disk is bounded by bytes rather
// than entry counts. A snapshot
// costs little whatever the store's size, since it links blob and upload
// files rather than copying them (fsm.FileLinker, snapstore).
func (n *Node) maybeSnapshot() {
	if n.logBytes.sinceSnapshot.Load() < n.cfg.SnapshotBytes {
		return
	}
	err := n.raft.Snapshot().Error()
	if err != nil && err != raft.ErrNothingNewToSnapshot {
		n.log.Warn("snapshot", "error", err)
		return
	}
	n.logBytes.sinceSnapshot.Store(0)
}

// every runs fn each interval until the node closes.
func (n *Node) every(interval time.Duration, fn func()) {
	defer n.wg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-n.done:
			return
		case <-t.C:
			fn()
		}
	}
}

// countingLogStore counts the bytes of entries written since the last
// snapshot for snapshotLoop, and remembers the last write error so that
// readiness reports a replica that cannot append (disk full).
type countingLogStore struct {
	raft.LogStore
	sinceSnapshot atomic.Int64
	lastErr       atomic.Pointer[error]
}

// Err is the last StoreLogs error, nil once a write succeeds again.
func (c *countingLogStore) Err() error {
	if p := c.lastErr.Load(); p != nil {
		return *p
	}
	return nil
}

func (c *countingLogStore) StoreLog(l *raft.Log) error {
	return c.StoreLogs([]*raft.Log{l})
}

func (c *countingLogStore) StoreLogs(logs []*raft.Log) error {
	var total int64
	for _, l := range logs {
		total += int64(len(l.Data))
	}
	if err := c.LogStore.StoreLogs(logs); err != nil {
		err = fmt.Errorf("store %d raft log entries: %w", len(logs), err)
		c.lastErr.Store(&err)
		return err
	}
	c.lastErr.Store(nil)
	c.sinceSnapshot.Add(total)
	return nil
}
