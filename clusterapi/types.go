package clusterapi

import "github.com/sourceraft/sourceraft/fsm"

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

// Leader returns the leader peer, if one is known.
func (s Status) Leader() (Peer, bool) {
	for _, p := range s.Peers {
		if p.Leader {
			return p, true
		}
	}
	return Peer{}, false
}

// Peer is one member of the Raft configuration with the addresses it
// registered through the log; PUT /v1/nodes/<id> carries one as the
// registration.
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

// ContentHash is a replica's applied state in one hash, as GET
// /v1/content-hash reports it: replicas at the same applied index must
// have the same hash.
type ContentHash struct {
	NodeID       string `json:"nodeID"`
	AppliedIndex uint64 `json:"appliedIndex"`
	Hash         string `json:"hash"`
}

// PutResult is the answer to a stored artifact (PUT /v1/artifacts/...).
type PutResult struct {
	Path     string `json:"path"`
	Digest   string `json:"digest"`
	Size     int64  `json:"size"`
	Revision string `json:"revision"`
	URL      string `json:"url"`
}
