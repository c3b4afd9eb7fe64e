package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"github.com/sourceraft/sourceraft/clusterapi"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// recoverTimeout bounds how long a replica may take to be Ready again
// after a fault ends; beyond it the fault loop stops, since a further
// fault could cost the quorum.
const recoverTimeout = 90 * time.Second

// fault is one kind of fault the loop injects.
type fault int

// faultNames name the faults in CHAOS_FAULTS.
var faultNames = [numFaults]string{"kill", "pause", "partition", "disk", "rolling"}

// parseFaults reads CHAOS_FAULTS, a comma-separated subset of faultNames
// to inject (all when unset or empty): to chase one kind of failure. A
// value that names no fault (",") is an error, not a run without faults.
func parseFaults(v string) (map[fault]bool, error) {
	on := map[fault]bool{}
	for f := range numFaults {
		on[f] = v == ""
	}
	if v == "" {
		return on, nil
	}
	named := 0
	for _, name := range strings.Split(v, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		i := slices.Index(faultNames[:], name)
		if i < 0 {
			return nil, fmt.Errorf("CHAOS_FAULTS: unknown fault %q (known: %s)", name, strings.Join(faultNames[:], ", "))
		}
		on[fault(i)] = true
		named++
	}
	if named == 0 {
		return nil, fmt.Errorf("CHAOS_FAULTS=%q names no fault (known: %s; unset for all)", v, strings.Join(faultNames[:], ", "))
	}
	return on, nil
}

const (
	faultKill fault = iota
	faultPause
	faultPartition
	faultDiskFull
	faultRolling
	numFaults
)

// faultLoop injects faults for the duration, counted from its start (after
// setup): first each kind once in a seeded order, so even a short run sees
// them all, then at random. With spares, the cluster scales up a third of
// the way in and back down at two thirds. Faults never overlap beyond a
// minority: a replica faulted is Ready again, following a leader, before
// the next fault starts.
func (s *suite) faultLoop(ctx context.Context, rng *rand.Rand) {
	start := time.Now()
	end := start.Add(s.cfg.duration)
	deck := rng.Perm(int(numFaults))
	scaledUp, scaledDown := len(s.spares) == 0, len(s.spares) == 0
	for dealt := 0; time.Now().Before(end) && ctx.Err() == nil; {
		time.Sleep(time.Duration(500+rng.IntN(2000)) * time.Millisecond)
		var err error
		switch elapsed := time.Since(start); {
		case !scaledUp && elapsed > s.cfg.duration/3:
			scaledUp, err = true, s.scaleUp(ctx)
		case !scaledDown && elapsed > 2*s.cfg.duration/3:
			scaledDown, err = true, s.scaleDown(ctx)
		default:
			f := fault(rng.IntN(int(numFaults)))
			if dealt < len(deck) {
				f = fault(deck[dealt])
			}
			dealt++
			if !s.cfg.faults[f] {
				continue
			}
			err = s.inject(ctx, rng, f)
		}
		if err != nil {
			s.problem("fault loop stops: %v", err)
			return
		}
	}
	if !scaledDown {
		if err := s.scaleDown(ctx); err != nil {
			s.problem("scale down: %v", err)
		}
	}
}

func (s *suite) inject(ctx context.Context, rng *rand.Rand, f fault) error {
	switch f {
	case faultKill:
		return s.kill(ctx, rng)
	case faultPause:
		return s.pause(ctx, rng)
	case faultPartition:
		return s.partition(ctx, rng)
	case faultDiskFull:
		return s.diskFull(ctx, rng)
	default:
		return s.rollingRestart(ctx)
	}
}

// leader returns the index of the current leader, waiting for one.
func (s *suite) leader(ctx context.Context) (int, error) {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return s.c.WaitLeader(wctx)
}

// kill SIGKILLs the leader or a random replica (in a cluster of five or
// more, sometimes a second one too, never a majority), and restarts each
// on its data directory after a short delay. When the leader died, a
// commit is pushed at once and the time until it is a Ready artifact is
// measured against the resume budget.
func (s *suite) kill(ctx context.Context, rng *rand.Rand) error {
	members := s.memberList()
	n := len(members)
	leader, err := s.leader(ctx)
	if err != nil {
		return err
	}
	victims := []int{members[rng.IntN(n)]}
	if rng.IntN(10) < 7 {
		victims[0] = leader
	}
	// Draw the same numbers whatever the leader is, so a seed replays the
	// same fault sequence.
	perm := rng.Perm(n)
	if maxDown := (n - 1) / 2; rng.IntN(3) == 0 {
		for _, k := range perm {
			if v := members[k]; len(victims) < maxDown && !slices.Contains(victims, v) {
				victims = append(victims, v)
			}
		}
	}
	killedLeader := slices.Contains(victims, leader)
	for _, v := range victims {
		s.c.Kill(v)
	}
	killedAt := time.Now()
	s.n.ran[faultKill].Add(1)
	var probeSHA string
	if killedLeader {
		s.n.leaderKills.Add(1)
		if probeSHA, err = s.commit(s.probe, s.probeRng, false); err != nil {
			return fmt.Errorf("push probe commit: %w", err)
		}
	}
	s.n.kills.Add(int64(len(victims)))
	restarted := make(chan error, len(victims))
	for _, v := range victims {
		delay := time.Duration(500+rng.IntN(2500)) * time.Millisecond
		go func() {
			time.Sleep(delay)
			restarted <- s.c.StartReplica(v)
		}()
	}
	desc := fmt.Sprintf("SIGKILL %s", s.ids(victims))
	if killedLeader {
		desc += " (leader " + s.c.Replicas[leader].ID + ")"
		s.measureResume(ctx, killedAt, probeSHA, desc, -1)
	} else {
		s.event("%s", desc)
	}
	for range victims {
		if err := <-restarted; err != nil {
			return err
		}
	}
	for _, v := range victims {
		if err := s.waitRecovered(ctx, v); err != nil {
			return err
		}
	}
	return nil
}

// measureResume waits for a new leader (other than old, which may still
// believe it leads for a moment when it was cut off, not killed) and then
// for the probe source to be Ready at sha, and records both delays.
func (s *suite) measureResume(ctx context.Context, killedAt time.Time, sha, desc string, old int) {
	nl, err := s.leader(ctx)
	for err == nil && nl == old && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
		nl, err = s.leader(ctx)
	}
	if err != nil {
		s.problem("%s: no new leader: %v", desc, err)
		return
	}
	elected := time.Now()
	want := "master@sha1:" + sha
	deadline := killedAt.Add(60 * time.Second)
	for grabbed := false; ; {
		if !grabbed && time.Since(elected) > resumeBudget*3/5 {
			// What the new leader does while it keeps the commit waiting.
			grabbed = true
			go s.grabStacks(nl, fmt.Sprintf("%s: pushed commit not Ready %v after the election", desc, resumeBudget*3/5))
		}
		var o sourcev1.GitRepository
		gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := env.Client.Get(gctx, client.ObjectKey{Namespace: s.ns, Name: s.probe.name}, &o)
		cancel()
		if err == nil && o.Status.Artifact != nil && o.Status.Artifact.Revision == want {
			if c := apimeta.FindStatusCondition(o.Status.Conditions, meta.ReadyCondition); c != nil && c.Status == metav1.ConditionTrue {
				break
			}
		}
		if time.Now().After(deadline) {
			s.problem("%s: commit %s pushed after the kill not Ready 60s later", desc, sha[:8])
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	ready := time.Now()
	election, resume := elected.Sub(killedAt), ready.Sub(elected)
	s.mu.Lock()
	s.elections = append(s.elections, election)
	s.resumes = append(s.resumes, resume)
	s.mu.Unlock()
	s.event("%s: %s leads after %v, pushed commit Ready %v later", desc, s.c.Replicas[nl].ID,
		election.Round(time.Millisecond), resume.Round(time.Millisecond))
	if resume > resumeBudget {
		s.problem("%s: reconciliation resumed %v after the new leader was elected (budget %v)", desc,
			resume.Round(time.Millisecond), resumeBudget)
	}
}

// pause SIGSTOPs the leader or a random replica for a few seconds.
func (s *suite) pause(ctx context.Context, rng *rand.Rand) error {
	leader, err := s.leader(ctx)
	if err != nil {
		return err
	}
	members := s.memberList()
	v := members[rng.IntN(len(members))]
	if rng.IntN(10) < 4 {
		v = leader
	}
	d := time.Duration(1000+rng.IntN(4000)) * time.Millisecond
	if !s.c.Pause(v) {
		return fmt.Errorf("pause %s: not running", s.c.Replicas[v].ID)
	}
	s.n.ran[faultPause].Add(1)
	what := ""
	if v == leader {
		what = " (leader)"
	}
	s.event("SIGSTOP %s%s for %v", s.c.Replicas[v].ID, what, d)
	time.Sleep(d)
	s.c.Resume(v)
	return s.waitRecovered(ctx, v)
}

// rollingRestart SIGTERMs the replicas one by one from the highest
// ordinal, as a StatefulSet update does, each Ready before the next.
func (s *suite) rollingRestart(ctx context.Context) error {
	s.event("rolling restart")
	members := s.memberList()
	for k := len(members) - 1; k >= 0; k-- {
		i := members[k]
		t0 := time.Now()
		s.c.Stop(i)
		stopped := time.Since(t0)
		if err := s.c.StartReplica(i); err != nil {
			return err
		}
		if err := s.waitRecovered(ctx, i); err != nil {
			return err
		}
		s.event("  %s restarted (stopped in %v, Ready %v after SIGTERM)", s.c.Replicas[i].ID,
			stopped.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
	}
	s.n.ran[faultRolling].Add(1)
	return nil
}

// waitRecovered waits until replica i is Ready and follows (or is) a
// leader that sees every running replica registered.
func (s *suite) waitRecovered(ctx context.Context, i int) error {
	wctx, cancel := context.WithTimeout(ctx, recoverTimeout)
	defer cancel()
	var last error
	for {
		err := s.c.Ready(wctx, i)
		if err == nil {
			var st clusterapi.Status
			if st, err = s.c.Status(wctx, i); err == nil && st.LeaderID == "" {
				err = errors.New("no leader known")
			}
		}
		if err == nil {
			if _, err = s.c.WaitLeader(wctx); err == nil {
				return nil
			}
		}
		last = err
		select {
		case <-wctx.Done():
			s.grabStacks(i, "not recovered: "+last.Error())
			return fmt.Errorf("%s not recovered within %v: %v", s.c.Replicas[i].ID, recoverTimeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// heal undoes whatever fault a stopped fault loop left behind: resumes,
// reconnects, frees the disk and starts every member, and waits until all
// are Ready.
func (s *suite) heal(ctx context.Context) {
	if err := s.freeDisk(); err != nil {
		s.problem("heal: %v", err)
	}
	for _, i := range s.memberList() {
		s.c.Resume(i)
		if err := s.c.Reconnect(i); err != nil {
			s.problem("heal: %v", err)
		}
		if !s.c.Running(i) {
			if err := s.c.StartReplica(i); err != nil {
				s.problem("heal: %v", err)
			}
		}
	}
	for _, i := range s.memberList() {
		if err := s.waitRecovered(ctx, i); err != nil {
			s.problem("heal: %v", err)
		}
	}
	s.event("healed: faults stopped")
}

func (s *suite) ids(is []int) string { return strings.Join(s.idList(is), "+") }

func (s *suite) idList(is []int) []string {
	var out []string
	for _, i := range is {
		out = append(out, s.c.Replicas[i].ID)
	}
	return out
}
