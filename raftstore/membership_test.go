package raftstore

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func suffrageOf(t *testing.T, nd *Node, id string) string {
	t.Helper()
	f := nd.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) == id {
			return srv.Suffrage.String()
		}
	}
	return ""
}

// addNode prepares one more node of tc without a bootstrap set.
func (tc *testCluster) addNode(id string) int {
	tc.t.Helper()
	pair, err := tc.ca.IssueLoopback(id)
	if err != nil {
		tc.t.Fatal(err)
	}
	tlsCfg, err := tc.ca.TLSConfig(pair)
	if err != nil {
		tc.t.Fatal(err)
	}
	cfg := tc.cfgs[0]
	cfg.NodeID, cfg.Dir, cfg.RaftBind, cfg.RaftAdvertise, cfg.Peers = id, tc.t.TempDir(), freeAddr(tc.t), "", nil
	cfg.TLS = NewTLSFilesFromConfig(tlsCfg)
	tc.cfgs = append(tc.cfgs, cfg)
	tc.nodes = append(tc.nodes, nil)
	return len(tc.nodes) - 1
}

// A node without a bootstrap set joins as a non-voter when the leader
// learns its address, catches up, can be promoted, and once removed is
// not promoted back by a stale autopilot decision.
func TestJoinAsNonvoterPromoteAndRemove(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	_, l := tc.leader()
	ctx := context.Background()
	content := randomBytes(1, 300<<10)
	a := art("join", "a.tar.gz")
	if err := l.Store(ctx, &a, bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	i := tc.addNode("n3")
	tc.start(i)
	if !tc.nodes[i].fresh.Load() {
		t.Fatal("a node without bootstrap set and state is not marked fresh")
	}
	if err := l.RegisterPeer(ctx, tc.nodes[i].self()); err != nil {
		t.Fatal(err)
	}
	if got := suffrageOf(t, l, "n3"); got != "Nonvoter" {
		t.Fatalf("n3 joined as %q, want Nonvoter", got)
	}
	tc.converge()
	if got := readAll(t, tc.nodes[i], a); !bytes.Equal(got, content) {
		t.Fatal("joined node serves different content")
	}
	ap := membersOnly{l.raft}
	if err := ap.AddVoter("n3", "", 0, 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	if got := suffrageOf(t, l, "n3"); got != "Voter" {
		t.Fatalf("n3 is %q after promotion", got)
	}
	if err := l.RemovePeer(ctx, "n3"); err != nil {
		t.Fatal(err)
	}
	if got := suffrageOf(t, l, "n3"); got != "" {
		t.Fatalf("n3 still %q after removal", got)
	}
	if err := ap.AddVoter("n3", raft.ServerAddress(tc.cfgs[i].RaftBind), 0, 5*time.Second).Error(); err == nil {
		t.Fatal("a removed server was promoted back")
	}
	if err := l.RemovePeer(ctx, l.cfg.NodeID); err == nil {
		t.Fatal("the leader removed itself")
	}
}

// A voter that comes back without Raft state and registers as fresh is
// demoted to non-voter (it may have forgotten votes and entries).
func TestFreshVoterIsDemoted(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	li, l := tc.leader()
	ctx := context.Background()
	v := (li + 1) % 3
	if err := l.RegisterPeer(ctx, tc.nodes[v].self()); err != nil {
		t.Fatal(err)
	}
	tc.stop(v)
	tc.cfgs[v].Dir, tc.cfgs[v].Peers = t.TempDir(), nil
	tc.start(v)
	p := tc.nodes[v].self()
	if !p.Fresh {
		t.Fatal("wiped node does not register as fresh")
	}
	if err := l.RegisterPeer(ctx, p); err != nil {
		t.Fatal(err)
	}
	if got := suffrageOf(t, l, p.ID); got != "Nonvoter" {
		t.Fatalf("wiped voter is %q, want Nonvoter", got)
	}
	tc.converge()
}
