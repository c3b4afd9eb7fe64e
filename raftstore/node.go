package raftstore

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/fsm"
	"github.com/sourceraft/sourceraft/raftstore/snapstore"
	"github.com/sourceraft/sourceraft/storage"
)

var (
	// ErrNotOpen is returned by operations on a node that is not open.
	ErrNotOpen = errors.New("raft node is not open")
	// ErrNotLeader is storage.ErrNotLeader, returned by writes on a follower.
	ErrNotLeader = storage.ErrNotLeader
	// ErrTimeout is returned when a wait reaches its deadline.
	ErrTimeout = errors.New("timed out")
)

const (
	// maxAppendEntries: raft-wal encodes one append's entries into a
	// buffer that doubles from 64 KiB and never shrinks. 16 full chunks
	// encode to just over 8 MiB, which grows it to 16 MiB on every
	// replica; 15 keep it at 8 MiB.
	maxAppendEntries = 15
	logCacheEntries  = 16
)

// Node is one replica: a Raft member whose FSM is the local artifact store.
type Node struct {
	cfg Config
	log *slog.Logger
	// api calls peers' internal APIs: registration and membership checks.
	api *clusterapi.Client

	// mu serialises Open and Close; the fields below are fixed between them.
	mu        sync.Mutex
	open      atomic.Bool
	raft      *raft.Raft
	fsm       *fsm.FSM
	transport *raft.NetworkTransport
	// stable is raft.db: Raft's term and vote, and the log too with
	// LogStoreBoltDB.
	stable    *raftboltdb.BoltStore
	logStore  logStore
	logBytes  *countingLogStore
	snapshots raft.SnapshotStore
	hlog      hclog.Logger
	// fresh is set while this node, started without Raft state and not
	// bootstrapping, has not yet registered with the leader.
	fresh atomic.Bool

	uploads *uploadSet
	guard   blobGuard
	// blobStoreErr is the object store's last health check.
	blobStoreErr atomic.Pointer[error]
	notify       chan bool
	observers    []func(isLeader bool)
	onCorrupt    func(digest string)
	done         chan struct{}
	wg           sync.WaitGroup
}

// New only allocates; Open brings the node up.
func New(cfg Config) *Node {
	cfg.setDefaults()
	return &Node{cfg: cfg, log: cfg.Logger.With("node", cfg.NodeID), uploads: newUploadSet(),
		api: clusterapi.NewClient(cfg.HTTPClient, cfg.APIToken)}
}

// OnLeadership registers fn to run, in order, on every leadership change of
// this node. Register before Open.
func (n *Node) OnLeadership(fn func(isLeader bool)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.observers = append(n.observers, fn)
}

// Open brings the node up in a fixed order: directories, FSM database,
// snapshot store, log store, transport, raft, then the background loops.
func (n *Node) Open() (err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.open.Load() {
		return nil
	}
	if err := n.cfg.validate(); err != nil {
		return fmt.Errorf("raftstore config: %w", err)
	}
	raftDir := filepath.Join(n.cfg.Dir, "raft")
	if err := os.MkdirAll(raftDir, 0o750); err != nil {
		return fmt.Errorf("create raft dir: %w", err)
	}
	// A crash leaves spooled uploads nobody will commit.
	if err := os.RemoveAll(filepath.Join(n.cfg.Dir, spoolDir)); err != nil {
		return fmt.Errorf("clear spool: %w", err)
	}
	var closers []io.Closer
	defer func() {
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i].Close()
			}
		}
	}()

	n.fsm, err = fsm.Open(filepath.Join(n.cfg.Dir, "fsm.db"), fsm.Options{NoSync: n.cfg.NoSync})
	if err != nil {
		return fmt.Errorf("open fsm: %w", err)
	}
	closers = append(closers, n.fsm)
	n.fsm.OnCorrupt(n.onCorrupt)

	hlog := hclog.New(&hclog.LoggerOptions{Name: "raft", JSONFormat: true, Level: hclog.Info, Output: os.Stderr}).
		With("node", n.cfg.NodeID)
	n.hlog = hlog
	// Snapshots may hard-link the FSM's immutable files instead of
	// copying them (snapstore.Linker); one is kept.
	n.snapshots, err = snapstore.New(raftDir, 1)
	if err != nil {
		return fmt.Errorf("open snapshot store: %w", err)
	}
	if err := n.restoreIfBehind(); err != nil {
		return err
	}

	n.stable, err = raftboltdb.New(raftboltdb.Options{Path: filepath.Join(raftDir, "raft.db")})
	if err != nil {
		return fmt.Errorf("open raft stable store: %w", err)
	}
	closers = append(closers, n.stable)
	n.logStore, err = openLogStore(raftDir, n.cfg.LogStore, n.cfg.SnapshotBytes, n.stable, hlog)
	if err != nil {
		return err
	}
	closers = append(closers, n.logStore)
	// Replication reads the newest entries right after writing them: a
	// small cache serves those from memory instead of reading them back
	// from the log store, bounded at logCacheEntries × 512 KiB.
	cached, err := raft.NewLogCache(logCacheEntries, n.logStore)
	if err != nil {
		return fmt.Errorf("raft log cache: %w", err)
	}
	n.logBytes = &countingLogStore{LogStore: cached}

	var tc *tls.Config
	if n.cfg.TLS != nil {
		if tc, err = n.cfg.TLS.load(); err != nil {
			return err
		}
	}
	stream, err := newStreamLayer(n.cfg.RaftBind, n.cfg.RaftAdvertise, tc)
	if err != nil {
		return err
	}
	n.transport = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: stream, MaxPool: 3, Timeout: 10 * time.Second, Logger: hlog.Named("net"),
		// One RPC in flight disables pipelined replication: after a
		// follower fails to store entries (disk full), the pipeline can
		// stop sending it appends for good (hashicorp/raft#612).
		MaxRPCsInFlight: 1,
	})
	closers = append(closers, closerFunc(n.transport.Close))

	n.notify = make(chan bool, 16)
	rc := n.raftConfig(hlog)
	n.raft, err = raft.NewRaft(rc, n.fsm, n.logBytes, n.stable, n.snapshots, n.transport)
	if err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	if err := n.bootstrap(); err != nil {
		n.raft.Shutdown().Error()
		return err
	}
	n.done = make(chan struct{})
	n.open.Store(true)
	n.wg.Add(3)
	go n.leadershipLoop()
	go n.every(time.Second, n.maybeSnapshot)
	go n.every(registerInterval, n.registerIfNeeded)
	if n.cfg.Blobs != nil {
		n.wg.Add(1)
		go n.checkBlobStore()
	}
	return nil
}

func (n *Node) raftConfig(hlog hclog.Logger) *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(n.cfg.NodeID)
	rc.Logger = hlog
	rc.HeartbeatTimeout = n.cfg.HeartbeatTimeout
	rc.ElectionTimeout = n.cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = n.cfg.HeartbeatTimeout / 2
	// The FSM keeps its own applied index durably, so a restart must not
	// restore the snapshot over newer state (restoreIfBehind handles the
	// case where the FSM database is older than the newest snapshot).
	rc.NoSnapshotRestoreOnStart = true
	rc.TrailingLogs = n.cfg.TrailingLogs
	// Snapshots are triggered by log bytes in snapshotLoop; raft's own
	// entry-count trigger is only a backstop.
	rc.SnapshotThreshold = 1 << 20
	rc.SnapshotInterval = 30 * time.Second
	// Entries are up to 512 KiB: 15 per AppendEntries bounds an RPC below
	// 8 MiB on both ends, which keeps peak memory independent of blob size
	// while batching enough entries per append (one fsync each, and with
	// LogStoreBoltDB one raft.db transaction that rarely rewrites a leaf
	// of earlier entries).
	rc.MaxAppendEntries = maxAppendEntries
	rc.NotifyCh = n.notify
	return rc
}

// bootstrap forms the cluster from the configured peer set on first start.
// Every replica of the set may bootstrap with the same configuration; raft
// ignores it once state exists. A node without state that is not in the
// set (scale-up), or whose join addresses show a running cluster (a wiped
// volume), does not bootstrap: it registers with the leader, which adds
// it as a non-voter (see membership.go).
func (n *Node) bootstrap() error {
	has, err := raft.HasExistingState(n.logStore, n.stable, n.snapshots)
	if err != nil {
		return fmt.Errorf("check raft state: %w", err)
	}
	if has {
		return nil
	}
	if len(n.cfg.Peers) == 0 || n.clusterExists() {
		n.fresh.Store(true)
		return nil
	}
	var servers []raft.Server
	for _, p := range n.cfg.Peers {
		addr := p.RaftAddr
		if p.ID == n.cfg.NodeID {
			addr = n.cfg.RaftAdvertise
		}
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.ID), Address: raft.ServerAddress(addr)})
	}
	if err := n.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		return fmt.Errorf("bootstrap raft: %w", err)
	}
	return nil
}

// restoreIfBehind restores the newest snapshot into the FSM when the FSM
// database is older than it (for example a lost or replaced fsm.db);
// otherwise the FSM's own state is newer and raft replays only the rest.
func (n *Node) restoreIfBehind() error {
	metas, err := n.snapshots.List()
	if err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	if len(metas) == 0 || metas[0].Index <= n.fsm.AppliedIndex() {
		return nil
	}
	_, rc, err := n.snapshots.Open(metas[0].ID)
	if err != nil {
		return fmt.Errorf("open snapshot %s: %w", metas[0].ID, err)
	}
	n.log.Info("fsm is behind the newest snapshot, restoring", "fsmIndex", n.fsm.AppliedIndex(), "snapshotIndex", metas[0].Index)
	if err := n.fsm.Restore(rc); err != nil {
		return fmt.Errorf("restore snapshot %s: %w", metas[0].ID, err)
	}
	return nil
}

// Close is idempotent and tears down in reverse: raft before the stores.
func (n *Node) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.open.Swap(false) {
		return nil
	}
	close(n.done)
	var errs []error
	if err := n.raft.Shutdown().Error(); err != nil {
		errs = append(errs, fmt.Errorf("shutdown raft: %w", err))
	}
	n.wg.Wait()
	if err := n.transport.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close transport: %w", err))
	}
	if err := n.logStore.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close log store: %w", err))
	}
	if err := n.stable.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close stable store: %w", err))
	}
	if err := n.fsm.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close fsm: %w", err))
	}
	return errors.Join(errs...)
}

// IsLeader reports whether this node is the Raft leader.
func (n *Node) IsLeader() bool {
	r := n.raftOrNil()
	return r != nil && r.State() == raft.Leader
}

// WaitForLeader blocks until some leader is known and returns its ID.
func (n *Node) WaitForLeader(timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		if r := n.raftOrNil(); r != nil {
			if _, id := r.LeaderWithID(); id != "" {
				return string(id), nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("wait for leader: %w", ErrTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitForAppliedIndex blocks until this replica's store reflects idx.
func (n *Node) WaitForAppliedIndex(idx uint64, timeout time.Duration) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		ch := n.fsm.Changed()
		applied := n.fsm.AppliedIndex()
		if r := n.raftOrNil(); r != nil {
			applied = n.appliedIndex(r)
		}
		if applied >= idx {
			return nil
		}
		select {
		case <-ch:
		case <-time.After(50 * time.Millisecond): // commits alone do not signal ch
		case <-timer.C:
			return fmt.Errorf("wait for applied index %d (at %d): %w", idx, applied, ErrTimeout)
		}
	}
}

// FSM exposes the local store for read-only views (tests, benchmarks, status).
func (n *Node) FSM() *fsm.FSM { return n.fsm }

func (n *Node) raftOrNil() *raft.Raft {
	if !n.open.Load() {
		return nil
	}
	return n.raft
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }
