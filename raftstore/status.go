package raftstore

import (
	"fmt"
	"strconv"

	"github.com/sourceraft/sourceraft/fsm"
)

// Status describes one replica as GET /v1/cluster reports it.
type Status struct {
	NodeID     string `json:"nodeID"`
	State      string `json:"state"`
	LeaderID   string `json:"leaderID"`
	LeaderAddr string `json:"leaderAddr"`
	Term       uint64 `json:"term"`
	// AppliedIndex is the last log index the store reflects: entries the
	// FSM never sees (no-ops, barriers) count once committed.
	AppliedIndex uint64 `json:"appliedIndex"`
	CommitIndex  uint64 `json:"commitIndex"`
	LastIndex    uint64 `json:"lastIndex"`
	Peers        []Peer `json:"peers"`
	Artifacts    int    `json:"artifacts"`
	Bytes        int64  `json:"bytes"`
	// Blobs and BlobBytes count distinct contents, stored once each.
	Blobs     int   `json:"blobs"`
	BlobBytes int64 `json:"blobBytes"`
	// Integrity is what hashing blob files against their digests (first
	// downloads and the scrub) found since this process started.
	Integrity fsm.IntegrityStats `json:"integrity"`
	// Uploads counts uploads still waiting for their commit.
	Uploads int `json:"uploads"`
	// FSMError is the last error applying the log locally (disk full, I/O),
	// empty once applying succeeds again.
	FSMError string `json:"fsmError,omitempty"`
	// LogError is the last error writing the Raft log (disk full...),
	// empty once a write succeeds again.
	LogError string `json:"logError,omitempty"`
}

// ContentHash is a replica's applied state in one hash, as GET
// /v1/content-hash reports it: replicas at the same applied index must
// have the same hash.
type ContentHash struct {
	NodeID       string `json:"nodeID"`
	AppliedIndex uint64 `json:"appliedIndex"`
	Hash         string `json:"hash"`
}

// ContentHash hashes the local store's metadata and the digest and size
// of every blob file on disk (see fsm.FSM.ContentHash); it reads every
// record, so it is for verification, not for probes.
func (n *Node) ContentHash() (ContentHash, error) {
	h, applied, err := n.fsm.ContentHash()
	return ContentHash{NodeID: n.cfg.NodeID, AppliedIndex: applied, Hash: h}, err
}

// Peer is one member of the Raft configuration with the addresses it
// registered through the log.
type Peer struct {
	ID          string `json:"id"`
	RaftAddr    string `json:"raftAddr"`
	APIAddr     string `json:"apiAddr,omitempty"`
	StorageAddr string `json:"storageAddr,omitempty"`
	Suffrage    string `json:"suffrage"`
	Leader      bool   `json:"leader"`
	// Fresh is set in a registration by a replica that started without
	// Raft state and did not bootstrap: a voter registering so is demoted
	// until it has caught up.
	Fresh bool `json:"fresh,omitempty"`
}

// Leader returns the leader peer, if one is known.
func (s Status) Leader() (Peer, bool) {
	for _, p := range s.Peers {
		if p.Leader {
			return p, true
		}
	}
	return Peer{}, false
}

// Status describes this replica and its peers from local state only.
func (n *Node) Status() Status {
	s := Status{NodeID: n.cfg.NodeID, State: "Shutdown"}
	r := n.raftOrNil()
	if r == nil {
		return s
	}
	s.State = r.State().String()
	addr, id := r.LeaderWithID()
	s.LeaderID, s.LeaderAddr = string(id), string(addr)
	stats := r.Stats()
	s.Term, _ = strconv.ParseUint(stats["term"], 10, 64)
	s.LastIndex = r.LastIndex()
	s.CommitIndex = r.CommitIndex()
	s.AppliedIndex = n.appliedIndex(r)
	if err := n.fsm.Err(); err != nil {
		s.FSMError = err.Error()
	}
	if err := n.logBytes.Err(); err != nil {
		s.LogError = err.Error()
	}
	if st, err := n.fsm.Stats(); err == nil {
		s.Artifacts, s.Bytes, s.Uploads = st.Artifacts, st.Bytes, st.Uploads
		s.Blobs, s.BlobBytes = st.Blobs, st.BlobBytes
	}
	s.Integrity = n.fsm.Integrity()
	nodes := map[string]fsm.Node{}
	if ns, err := n.fsm.Nodes(); err == nil {
		for _, nd := range ns {
			nodes[nd.ID] = nd
		}
	}
	if f := r.GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			nd := nodes[string(srv.ID)]
			s.Peers = append(s.Peers, Peer{
				ID: string(srv.ID), RaftAddr: string(srv.Address), APIAddr: nd.APIAddr, StorageAddr: nd.StorageAddr,
				Suffrage: srv.Suffrage.String(), Leader: srv.ID == id,
			})
		}
	}
	return s
}

// Ready returns nil when this replica should receive artifact traffic: its
// store applies cleanly and is within ReadyLag entries of what it knows to
// be committed, or no leader is reachable but it has data to serve.
func (n *Node) Ready() error {
	r := n.raftOrNil()
	if r == nil {
		return ErrNotOpen
	}
	if err := n.fsm.Err(); err != nil {
		return fmt.Errorf("applying the log fails: %w", err)
	}
	if err := n.logBytes.Err(); err != nil {
		return fmt.Errorf("writing the raft log fails: %w", err)
	}
	applied := n.appliedIndex(r)
	if _, id := r.LeaderWithID(); id == "" {
		if st, err := n.fsm.Stats(); err == nil && st.Artifacts > 0 {
			return nil
		}
		return fmt.Errorf("no raft leader and no artifacts to serve")
	}
	if commit := r.CommitIndex(); commit > applied+n.cfg.ReadyLag {
		return fmt.Errorf("applied index %d trails commit index %d", applied, commit)
	}
	return nil
}
