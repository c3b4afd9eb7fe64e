package metrics

import "github.com/prometheus/client_golang/prometheus"

// RaftState is what the Raft gauges report, read at scrape time.
type RaftState struct {
	Term, AppliedIndex, CommitIndex, LastIndex uint64
	// Leader is true on the Raft leader; HasLeader when any leader is known.
	Leader, HasLeader bool
}

var (
	raftTermDesc      = prometheus.NewDesc("source_controller_raft_term", "Current Raft term of this replica.", nil, nil)
	raftAppliedDesc   = prometheus.NewDesc("source_controller_raft_applied_index", "Last log index applied to this replica's store.", nil, nil)
	raftCommitDesc    = prometheus.NewDesc("source_controller_raft_commit_index", "Last log index this replica knows to be committed.", nil, nil)
	raftLastDesc      = prometheus.NewDesc("source_controller_raft_last_index", "Last log index in this replica's log.", nil, nil)
	raftLeaderDesc    = prometheus.NewDesc("source_controller_raft_leader", "1 when this replica is the Raft leader.", nil, nil)
	raftHasLeaderDesc = prometheus.NewDesc("source_controller_raft_has_leader", "1 when this replica knows a Raft leader.", nil, nil)
)

// RegisterRaft exports the replica's Raft state, read from state at every
// scrape so the gauges are never stale.
func RegisterRaft(state func() RaftState) error {
	return Registry.Register(raftCollector(state))
}

type raftCollector func() RaftState

func (c raftCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{raftTermDesc, raftAppliedDesc, raftCommitDesc, raftLastDesc, raftLeaderDesc, raftHasLeaderDesc} {
		ch <- d
	}
}

func (c raftCollector) Collect(ch chan<- prometheus.Metric) {
	s := c()
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	gauge(raftTermDesc, float64(s.Term))
	gauge(raftAppliedDesc, float64(s.AppliedIndex))
	gauge(raftCommitDesc, float64(s.CommitIndex))
	gauge(raftLastDesc, float64(s.LastIndex))
	gauge(raftLeaderDesc, boolValue(s.Leader))
	gauge(raftHasLeaderDesc, boolValue(s.HasLeader))
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
