package metrics

import (
	"testing"

	dto "github.com/prometheus/client_model/go"
)

func TestRaftGaugesReadStateAtScrape(t *testing.T) {
	state := RaftState{Term: 3, AppliedIndex: 40, CommitIndex: 42, LastIndex: 42, Leader: true, HasLeader: true}
	if err := RegisterRaft(func() RaftState { return state }); err != nil {
		t.Fatal(err)
	}
	read := func() map[string]float64 {
		families, err := Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		for _, f := range families {
			if f.GetType() == dto.MetricType_GAUGE && len(f.Metric) == 1 {
				got[f.GetName()] = f.Metric[0].GetGauge().GetValue()
			}
		}
		return got
	}
	got := read()
	want := map[string]float64{
		"source_controller_raft_term": 3, "source_controller_raft_applied_index": 40,
		"source_controller_raft_commit_index": 42, "source_controller_raft_last_index": 42,
		"source_controller_raft_leader": 1, "source_controller_raft_has_leader": 1,
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("%s = %v, want %v", k, got[k], v)
		}
	}
	state.Leader, state.Term = false, 4
	if got := read(); got["source_controller_raft_leader"] != 0 || got["source_controller_raft_term"] != 4 {
		t.Fatalf("gauges did not follow the state: %v", got)
	}
}
