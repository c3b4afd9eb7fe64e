package raftstore

import (
	"context"
	"fmt"
	"time"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/fsm"
)

// registerInterval is how often a replica checks that the log holds its
// current API and artifact addresses.
const registerInterval = 2 * time.Second

// RegisterPeer records a replica's addresses through the log; the internal
// API calls it on the leader for followers.
func (n *Node) RegisterPeer(ctx context.Context, p clusterapi.Peer) error {
	r, err := n.leaderRaft()
	if err != nil {
		return err
	}
	if p.ID == "" {
		return fmt.Errorf("register peer: empty id")
	}
	hadRecord := false
	if nodes, err := n.fsm.Nodes(); err == nil {
		for _, nd := range nodes {
			hadRecord = hadRecord || nd.ID == p.ID
		}
	}
	if err := n.propose(ctx, r, fsm.EncodeSetNode(fsm.Node{ID: p.ID, RaftAddr: p.RaftAddr, APIAddr: p.APIAddr, StorageAddr: p.StorageAddr})); err != nil {
		return err
	}
	return n.ensureMember(r, p, hadRecord)
}

func (n *Node) self() clusterapi.Peer {
	return clusterapi.Peer{ID: n.cfg.NodeID, RaftAddr: n.cfg.RaftAdvertise, APIAddr: n.cfg.APIAddr, StorageAddr: n.cfg.StorageAddr, Fresh: n.fresh.Load()}
}

func (n *Node) registered() bool {
	nodes, err := n.fsm.Nodes()
	if err != nil {
		return false
	}
	want := n.self()
	for _, nd := range nodes {
		if nd.ID == want.ID {
			return nd.RaftAddr == want.RaftAddr && nd.APIAddr == want.APIAddr && nd.StorageAddr == want.StorageAddr
		}
	}
	return false
}

func (n *Node) registerSelf(ctx context.Context) {
	if n.registered() {
		return
	}
	if err := n.RegisterPeer(ctx, n.self()); err != nil {
		n.log.Warn("register self", "error", err)
	}
}

// registerIfNeeded makes a follower's addresses known: followers cannot
// write to the log, so they ask the leader's internal API to do it. The
// same call asks the leader to add a joining node to the configuration;
// without a known leader it goes to the join addresses and the replicas
// this node knows, whose internal API forwards it to the leader.
func (n *Node) registerIfNeeded() {
	if n.cfg.APIAddr == "" || n.IsLeader() {
		return
	}
	if n.registered() && !n.fresh.Load() && n.inConfiguration() {
		return
	}
	var targets []string
	if leader, ok := n.Status().Leader(); ok && leader.APIAddr != "" {
		targets = append(targets, leader.APIAddr)
	} else {
		targets = append(targets, n.cfg.Join...)
		if nodes, err := n.fsm.Nodes(); err == nil {
			for _, nd := range nodes {
				targets = append(targets, nd.APIAddr)
			}
		}
	}
	for _, addr := range targets {
		if addr == "" || addr == n.cfg.APIAddr {
			continue
		}
		err := n.registerWith(addr)
		if err == nil {
			n.fresh.Store(false)
			return
		}
		n.log.Debug("register with leader", "via", addr, "error", err)
	}
}

func (n *Node) registerWith(apiAddr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return n.api.Register(ctx, apiAddr, n.self())
}
