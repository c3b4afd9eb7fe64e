package raftstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	autopilot "github.com/hashicorp/raft-autopilot"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/fsm"
)

// Membership timing; see raftstore/DESIGN.md "Membership".
const (
	autopilotUpdateInterval    = 2 * time.Second
	autopilotReconcileInterval = 2 * time.Second
	// maxTrailingLogs is how far behind the leader's last index a server
	// may be and still count as healthy for promotion.
	maxTrailingLogs = 256
	// minQuorum is the voter count below which autopilot removes no
	// failed voter.
	minQuorum = 3
)

// ErrLeaderRemoval is returned when the leader is asked to remove itself:
// it hands leadership over first, and the caller retries.
var ErrLeaderRemoval = errors.New("cannot remove the leader; leadership is being transferred, retry")

// membership is autopilot's delegate on the leader: it reports the Raft
// configuration as the known servers, fetches each peer's progress through
// its internal API, and removes servers that stayed unreachable beyond
// DeadServerTimeout.
type membership struct {
	n *Node

	mu       sync.Mutex
	lastSeen map[raft.ServerID]time.Time
	voters   string
}

// runAutopilot promotes caught-up non-voters and removes dead servers
// until ctx ends; it runs among the leader's duties.
func (n *Node) runAutopilot(ctx context.Context) {
	m := &membership{n: n, lastSeen: map[raft.ServerID]time.Time{}}
	ap := autopilot.New(membersOnly{n.raft}, m,
		autopilot.WithLogger(n.hlog.Named("autopilot")),
		autopilot.WithUpdateInterval(autopilotUpdateInterval),
		autopilot.WithReconcileInterval(autopilotReconcileInterval))
	ap.Start(ctx)
	<-ctx.Done()
	<-ap.Stop()
}

// membersOnly lets autopilot promote only servers still in the
// configuration: its promotions are computed from a state up to an update
// interval old, and a plain AddVoter would re-add a server removed in the
// meantime (DELETE /v1/nodes/<id>). The configuration index read here is
// passed as prevIndex, so a change in between makes raft refuse.
type membersOnly struct{ *raft.Raft }

func (r membersOnly) AddVoter(id raft.ServerID, _ raft.ServerAddress, _ uint64, timeout time.Duration) raft.IndexFuture {
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		return failedFuture{err}
	}
	for _, srv := range f.Configuration().Servers {
		if srv.ID == id {
			return r.Raft.AddVoter(id, srv.Address, f.Index(), timeout)
		}
	}
	return failedFuture{fmt.Errorf("promote %s: no longer in the configuration", id)}
}

type failedFuture struct{ err error }

func (f failedFuture) Error() error  { return f.err }
func (f failedFuture) Index() uint64 { return 0 }

func (m *membership) AutopilotConfig() *autopilot.Config {
	return &autopilot.Config{
		CleanupDeadServers:      m.n.cfg.DeadServerTimeout > 0,
		LastContactThreshold:    10 * time.Second,
		MaxTrailingLogs:         maxTrailingLogs,
		MinQuorum:               minQuorum,
		ServerStabilizationTime: m.n.cfg.ServerStabilizationTime,
	}
}

func (m *membership) NotifyState(s *autopilot.State) {
	ids := fmt.Sprint(s.Voters)
	m.mu.Lock()
	changed := ids != m.voters
	m.voters = ids
	m.mu.Unlock()
	if changed {
		m.n.log.Info("raft voters", "voters", ids, "healthy", s.Healthy, "failureTolerance", s.FailureTolerance)
	}
}

// KnownServers is the Raft configuration: servers leave it only through
// RemoveServer (autopilot's dead-server cleanup or DELETE /v1/nodes/<id>),
// so none is ever "stale". A server unreachable for DeadServerTimeout is
// reported failed.
func (m *membership) KnownServers() map[raft.ServerID]*autopilot.Server {
	f := m.n.raft.GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	self := raft.ServerID(m.n.cfg.NodeID)
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[raft.ServerID]*autopilot.Server{}
	for _, srv := range f.Configuration().Servers {
		seen, ok := m.lastSeen[srv.ID]
		if !ok || srv.ID == self {
			seen = now
			m.lastSeen[srv.ID] = now
		}
		status := autopilot.NodeAlive
		if d := m.n.cfg.DeadServerTimeout; d > 0 && now.Sub(seen) > d {
			status = autopilot.NodeFailed
		}
		out[srv.ID] = &autopilot.Server{
			ID: srv.ID, Name: string(srv.ID), Address: srv.Address, NodeStatus: status,
			RaftVersion: raft.ProtocolVersionMax, IsLeader: srv.ID == self, NodeType: autopilot.NodeVoter,
		}
	}
	return out
}

// FetchServerStats asks every server in the configuration (failed ones
// too, so they can come back) for its Raft progress through GET
// /v1/cluster; the leader answers from its own raft.
func (m *membership) FetchServerStats(ctx context.Context, alive map[raft.ServerID]*autopilot.Server) map[raft.ServerID]*autopilot.ServerStats {
	f := m.n.raft.GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	apis := map[string]string{}
	if nodes, err := m.n.fsm.Nodes(); err == nil {
		for _, nd := range nodes {
			apis[nd.ID] = nd.APIAddr
		}
	}
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		out = map[raft.ServerID]*autopilot.ServerStats{}
	)
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) == m.n.cfg.NodeID {
			st := m.n.raft.Stats()
			term, _ := strconv.ParseUint(st["last_log_term"], 10, 64)
			out[srv.ID] = &autopilot.ServerStats{LastTerm: term, LastIndex: m.n.raft.LastIndex()}
			continue
		}
		api := apis[string(srv.ID)]
		if api == "" {
			continue
		}
		wg.Add(1)
		go func(id raft.ServerID) {
			defer wg.Done()
			s, err := m.n.api.Status(ctx, api)
			if err != nil || s.NodeID != string(id) {
				return
			}
			m.mu.Lock()
			m.lastSeen[id] = time.Now()
			m.mu.Unlock()
			if _, ok := alive[id]; !ok {
				return
			}
			mu.Lock()
			out[id] = &autopilot.ServerStats{LastTerm: s.Term, LastIndex: s.LastIndex}
			mu.Unlock()
		}(srv.ID)
	}
	wg.Wait()
	return out
}

func (m *membership) RemoveFailedServer(srv *autopilot.Server) {
	m.n.log.Warn("removing a server unreachable beyond the dead-server timeout", "server", srv.ID)
	ctx, cancel := context.WithTimeout(context.Background(), m.n.cfg.ApplyTimeout)
	defer cancel()
	if err := m.n.RemovePeer(ctx, string(srv.ID)); err != nil {
		m.n.log.Warn("remove failed server", "server", srv.ID, "error", err)
	}
}

// RemovePeer takes a server out of the Raft configuration and its address
// record out of the log (leader only). Removing the leader itself
// transfers leadership and fails with ErrLeaderRemoval, to be retried on
// the next leader.
func (n *Node) RemovePeer(ctx context.Context, id string) error {
	r, err := n.leaderRaft()
	if err != nil {
		return err
	}
	if id == n.cfg.NodeID {
		if err := r.LeadershipTransfer().Error(); err != nil {
			return fmt.Errorf("remove %s: transfer leadership: %w", id, err)
		}
		return ErrLeaderRemoval
	}
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		return mapRaftErr(err)
	}
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) == id {
			if err := futureErr(r.RemoveServer(srv.ID, 0, n.cfg.ApplyTimeout)); err != nil {
				return err
			}
			break
		}
	}
	return n.propose(ctx, r, fsm.EncodeRemoveNode(id))
}

// ensureMember runs on the leader after a replica registered: a replica
// not in the configuration joins as a non-voter (autopilot promotes it
// once it is caught up and stable); a voter that comes back without any
// Raft state of its own (a wiped volume) is demoted first, since it has
// forgotten entries it may have acknowledged and votes it may have cast.
func (n *Node) ensureMember(r *raft.Raft, p clusterapi.Peer, hadRecord bool) error {
	if p.ID == n.cfg.NodeID || p.RaftAddr == "" {
		return nil
	}
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		return mapRaftErr(err)
	}
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) != p.ID {
			continue
		}
		if p.Fresh && hadRecord && srv.Suffrage == raft.Voter {
			n.log.Warn("voter rejoined without raft state, demoting until it has caught up", "server", p.ID)
			return futureErr(r.DemoteVoter(srv.ID, 0, n.cfg.ApplyTimeout))
		}
		return nil
	}
	n.log.Info("adding server as non-voter", "server", p.ID, "raftAddr", p.RaftAddr)
	return futureErr(r.AddNonvoter(raft.ServerID(p.ID), raft.ServerAddress(p.RaftAddr), 0, n.cfg.ApplyTimeout))
}

// futureErr waits for a membership change and maps raft's errors.
func futureErr(f raft.Future) error {
	if err := f.Error(); err != nil {
		return mapRaftErr(err)
	}
	return nil
}

// clusterExists asks the join addresses whether a cluster already runs: a
// peer that answers with entries beyond the bootstrap configuration (a
// leader has been elected) or a known leader.
func (n *Node) clusterExists() bool {
	for _, addr := range n.cfg.Join {
		if addr == n.cfg.APIAddr {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s, err := n.api.Status(ctx, addr)
		cancel()
		if err == nil && s.NodeID != n.cfg.NodeID && (s.LeaderID != "" || s.LastIndex > 1) {
			n.log.Info("a cluster already exists, joining instead of bootstrapping", "peer", s.NodeID)
			return true
		}
	}
	return false
}

// inConfiguration reports whether this node's Raft configuration lists it.
func (n *Node) inConfiguration() bool {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) == n.cfg.NodeID {
			return true
		}
	}
	return false
}
