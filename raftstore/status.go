package raftstore

// Status describes one replica as GET /v1/cluster reports it.
type Status struct {
	NodeID       string `json:"nodeID"`
	State        string `json:"state"`
	LeaderID     string `json:"leaderID"`
	LeaderAddr   string `json:"leaderAddr"`
	Term         uint64 `json:"term"`
	AppliedIndex uint64 `json:"appliedIndex"`
	CommitIndex  uint64 `json:"commitIndex"`
	LastIndex    uint64 `json:"lastIndex"`
	Peers        []Peer `json:"peers"`
	Artifacts    int    `json:"artifacts"`
	Bytes        int64  `json:"bytes"`
	// FSMError is the last error applying the log locally (disk full, I/O),
	// empty once applying succeeds again.
	FSMError string `json:"fsmError,omitempty"`
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
