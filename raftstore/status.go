package raftstore

import (
	"fmt"
	"strconv"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/fsm"
)

// ContentHash hashes the local store's metadata and the digest and size
// of every blob file on disk (see fsm.FSM.ContentHash); it reads every
// record, so it is for verification, not for probes.
func (n *Node) ContentHash() (clusterapi.ContentHash, error) {
	h, applied, err := n.fsm.ContentHash()
	return clusterapi.ContentHash{NodeID: n.cfg.NodeID, AppliedIndex: applied, Hash: h}, err
}

// Status describes this replica and its peers from local state only.
func (n *Node) Status() clusterapi.Status {
	s := clusterapi.Status{NodeID: n.cfg.NodeID, State: "Shutdown"}
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
			s.Peers = append(s.Peers, clusterapi.Peer{
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
	if err := n.blobStoreHealth(); err != nil {
		return err
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
