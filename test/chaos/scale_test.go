package chaos

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/sourceraft/sourceraft/clusterapi"
)

// scaleTimeout bounds a scale step: joining, catching up, promotion.
const scaleTimeout = 2 * time.Minute

// scaleUp starts the spares as a StatefulSet scale-up does: they join
// through the internal API as non-voters, are promoted once caught up,
// and take consumer traffic once Ready, as a Service's endpoints would.
func (s *suite) scaleUp(ctx context.Context) error {
	t0 := time.Now()
	before := s.memberList()
	for _, i := range s.spares {
		if err := s.c.StartReplica(i); err != nil {
			return err
		}
	}
	nonvoter := map[string]bool{}
	wctx, cancel := context.WithTimeout(ctx, scaleTimeout)
	defer cancel()
	if err := s.c.WaitVoters(wctx, s.idList(append(before, s.spares...)), func(st clusterapi.Status) {
		for _, p := range st.Peers {
			nonvoter[p.ID] = nonvoter[p.ID] || p.Suffrage == "Nonvoter"
		}
	}); err != nil {
		return fmt.Errorf("scale up: %w", err)
	}
	for _, i := range s.spares {
		if !nonvoter[s.c.Replicas[i].ID] {
			s.problem("scale up: %s was never seen as a non-voter before its promotion", s.c.Replicas[i].ID)
		}
		if err := s.waitRecovered(ctx, i); err != nil {
			return fmt.Errorf("scale up: %w", err)
		}
	}
	voters, err := s.voters(ctx)
	if err != nil {
		return fmt.Errorf("scale up: %w", err)
	}
	s.mu.Lock()
	s.members = append(s.members, s.spares...)
	s.scaledTo[0] = voters
	s.mu.Unlock()
	s.event("scaled %d → %d: %s joined as non-voters, all voters and Ready %v later",
		len(before), len(before)+len(s.spares), s.ids(s.spares), time.Since(t0).Round(time.Millisecond))
	return nil
}

// scaleDown removes the spares again, highest ordinal first as a
// StatefulSet does: out of the Service, stopped, then taken out of the
// Raft configuration with DELETE /v1/nodes/<id> through the others. The
// remaining members must end as the only voters.
func (s *suite) scaleDown(ctx context.Context) error {
	t0 := time.Now()
	s.mu.Lock()
	s.members = slices.DeleteFunc(s.members, func(i int) bool { return slices.Contains(s.spares, i) })
	s.mu.Unlock()
	for k := len(s.spares) - 1; k >= 0; k-- {
		i := s.spares[k]
		s.c.Stop(i)
		deadline := time.Now().Add(scaleTimeout)
		for {
			leader, err := s.leader(ctx)
			if err == nil {
				err = s.c.RemoveNode(ctx, leader, i)
			}
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("scale down: remove %s: %w", s.c.Replicas[i].ID, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, scaleTimeout)
	defer cancel()
	after := s.memberList()
	if err := s.c.WaitVoters(wctx, s.idList(after), nil); err != nil {
		return fmt.Errorf("scale down: %w", err)
	}
	voters, err := s.voters(ctx)
	if err != nil {
		return fmt.Errorf("scale down: %w", err)
	}
	s.mu.Lock()
	s.scaledTo[1] = voters
	s.mu.Unlock()
	s.event("scaled %d → %d: %s removed, voters %s, %v", len(after)+len(s.spares), len(after),
		s.ids(s.spares), s.ids(after), time.Since(t0).Round(time.Millisecond))
	return nil
}

// voters returns the members of the leader's Raft configuration, each
// with its suffrage ("replica-3/Voter"), sorted.
func (s *suite) voters(ctx context.Context) ([]string, error) {
	leader, err := s.leader(ctx)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := s.c.Status(sctx, leader)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range st.Peers {
		out = append(out, p.ID+"/"+p.Suffrage)
	}
	slices.Sort(out)
	return out, nil
}
