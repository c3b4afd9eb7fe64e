package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"
)

// partition cuts one replica off from its peers for a few seconds: the
// leader every other time, else a follower. Consumers, the API server and
// the Git server still reach it, as in a real network split between pods.
// When the leader is cut off, a commit is pushed at once and the time
// until the majority's new leader makes it a Ready artifact is measured
// like a leader kill's. Meanwhile the replica cut off must keep serving
// the artifacts it held and report Ready.
func (s *suite) partition(ctx context.Context, rng *rand.Rand) error {
	leader, err := s.leader(ctx)
	if err != nil {
		return err
	}
	members := s.memberList()
	v := members[rng.IntN(len(members))]
	d := time.Duration(3000+rng.IntN(5000)) * time.Millisecond
	ofLeader := s.n.partitions.Load()%2 == 0
	switch {
	case ofLeader:
		v = leader
	case v == leader:
		v = members[(slices.Index(members, v)+1)%len(members)]
	}
	held := s.held(ctx, v, rng)
	if err := s.c.Partition(v); err != nil {
		return err
	}
	cut := time.Now()
	s.n.partitions.Add(1)
	s.n.ran[faultPartition].Add(1)
	desc := fmt.Sprintf("partition %s for %v", s.c.Replicas[v].ID, d)
	var probeSHA string
	if ofLeader {
		s.n.leaderPartitions.Add(1)
		desc = fmt.Sprintf("partition %s (leader) for %v", s.c.Replicas[v].ID, d)
		if probeSHA, err = s.commit(s.probe, s.probeRng, false); err != nil {
			_ = s.c.Reconnect(v)
			return fmt.Errorf("push probe commit: %w", err)
		}
	}
	// The minority checks run beside the resume measurement: once the cut
	// off replica has noticed (a leader's lease, a follower's heartbeat
	// timeout) and again just before the partition heals.
	checked := make(chan struct{})
	go func() {
		defer close(checked)
		for _, at := range []time.Duration{2 * time.Second, d - 300*time.Millisecond} {
			time.Sleep(time.Until(cut.Add(at)))
			s.checkMinority(ctx, v, held, desc)
		}
	}()
	if ofLeader {
		s.measureResume(ctx, cut, probeSHA, desc, v)
	} else {
		s.event("%s", desc)
	}
	<-checked
	time.Sleep(time.Until(cut.Add(d)))
	if err := s.c.Reconnect(v); err != nil {
		return err
	}
	healed := time.Now()
	if err := s.waitRecovered(ctx, v); err != nil {
		return err
	}
	s.mu.Lock()
	s.rejoins = append(s.rejoins, time.Since(healed))
	s.mu.Unlock()
	return nil
}

// held returns up to eight artifacts retention protects that replica v
// serves from its own store now: what it must go on serving through a
// fault that cuts it off or fills its disk.
func (s *suite) held(ctx context.Context, v int, rng *rand.Rand) []artifactRec {
	all := s.tr.snapshot()
	rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	var held []artifactRec
	for _, a := range all {
		if len(held) == 8 {
			break
		}
		if !s.tr.protected(a.path, time.Now()) {
			continue
		}
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		d, res, _ := fetch(fctx, s.c.ArtifactURL(v, a.path), true)
		cancel()
		if res == served && d == a.digest {
			held = append(held, a)
		}
	}
	return held
}

// checkMinority checks that replica v, cut off from its peers, reports
// Ready and serves from its own store the artifacts it held. A check with
// nothing to serve proves nothing and fails.
func (s *suite) checkMinority(ctx context.Context, v int, held []artifactRec, desc string) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.c.Ready(cctx, v); err != nil {
		s.problem("%s: the replica cut off is not Ready: %v", desc, err)
		s.grabStacks(v, "not Ready while cut off: "+err.Error())
		return
	}
	checked, msg := s.servesHeld(ctx, v, held)
	switch {
	case msg != "":
		s.problem("%s: %s", desc, msg)
	case checked == 0:
		s.problem("%s: minority check with no artifact to check (%d held before the cut, none served or protected now)", desc, len(held))
	default:
		s.n.minorityChecks.Add(1)
	}
}

// servesHeld downloads each held artifact from replica v's own store
// (never relayed from a peer) and returns how many it served intact and
// what went wrong, "" when nothing did. An artifact retention no longer
// protects may be gone: the replica may still apply a garbage collection
// committed before the fault (a replica with a full disk applies new
// ones: bbolt reuses its free pages).
func (s *suite) servesHeld(ctx context.Context, v int, held []artifactRec) (int, string) {
	checked := 0
	for _, a := range held {
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		d, res, err := fetch(fctx, s.c.ArtifactURL(v, a.path), true)
		cancel()
		switch {
		case res == served && d == a.digest:
			checked++
			s.n.heldChecked.Add(1)
		case res == served:
			s.n.mismatches.Add(1)
			return checked, fmt.Sprintf("%s served %s it held with digest %s, want %s", s.c.Replicas[v].ID, a.path, d, a.digest)
		case s.tr.protected(a.path, time.Now()):
			if res == notFound {
				err = errors.New("404")
			}
			return checked, fmt.Sprintf("%s stopped serving %s it held (%v)", s.c.Replicas[v].ID, a.path, err)
		}
	}
	return checked, ""
}
