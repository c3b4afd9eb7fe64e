package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/internal/cluster"
)

// membershipArgs make promotion and dead-server removal quick enough to test.
var membershipArgs = []string{"--raft-server-stabilization-time=2s", "--raft-dead-server-timeout=6s"}

// TestScaleUpAndDown scales 3 → 5 → 3 while readers and a writer keep
// going: the new replicas join as non-voters, are promoted once caught up
// and serve every artifact; on the way down one replica is removed through
// DELETE /v1/nodes/<id> and the other, simply gone, by the leader's
// dead-server cleanup, leaving the three original voters.
func TestScaleUpAndDown(t *testing.T) {
	c, leader := startCluster(t, 3, membershipArgs, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	var (
		mu      sync.Mutex
		stored  = map[string]string{} // path → digest
		failure atomic.Value
		reads   atomic.Int64
		wg      sync.WaitGroup
	)
	first := put(t, c, leader, "gitrepository/flux-system/scale/first.tar.gz", randomContent(1, 4<<20))
	stored[first.Path] = first.Digest

	// Readers on the three original replicas and a writer through them,
	// for the whole scale-up and scale-down.
	stop := make(chan struct{})
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				code, d, err := get(ctx, c.ArtifactURL(i, first.Path))
				reads.Add(1)
				if err != nil || code != http.StatusOK || d != first.Digest {
					failure.CompareAndSwap(nil, fmt.Sprintf("read on %s: code %d digest %s err %v", c.Replicas[i].ID, code, d, err))
				}
				time.Sleep(20 * time.Millisecond)
			}
		}(i)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			case <-time.After(300 * time.Millisecond):
			}
			content := randomContent(int64(1000+n), 256<<10+n)
			path := fmt.Sprintf("gitrepository/flux-system/scale/w%d.tar.gz", n)
			res, err := c.Put(ctx, n%3, path, strings.NewReader(string(content)), int64(len(content)))
			if err != nil {
				failure.CompareAndSwap(nil, fmt.Sprintf("write %s via %s: %v", path, c.Replicas[n%3].ID, err))
				continue
			}
			mu.Lock()
			stored[res.Path] = res.Digest
			mu.Unlock()
		}
	}()

	// Scale up: replica-3 and replica-4 join.
	var added []int
	for range 2 {
		i, err := c.AddReplica()
		if err != nil {
			t.Fatal(err)
		}
		if err := c.StartReplica(i); err != nil {
			t.Fatal(err)
		}
		added = append(added, i)
	}
	sawNonvoter := map[string]bool{}
	want5 := []string{"replica-0", "replica-1", "replica-2", "replica-3", "replica-4"}
	waitMembers(ctx, t, c, want5, func(s clusterapi.Status) {
		for _, p := range s.Peers {
			if p.Suffrage == "Nonvoter" {
				sawNonvoter[p.ID] = true
			}
		}
	})
	for _, i := range added {
		if !sawNonvoter[c.Replicas[i].ID] {
			t.Errorf("%s was never seen as a non-voter before its promotion", c.Replicas[i].ID)
		}
	}
	// Every new replica serves everything stored so far.
	time.Sleep(time.Second)
	mu.Lock()
	snapshot := map[string]string{}
	for p, d := range stored {
		snapshot[p] = d
	}
	mu.Unlock()
	for _, i := range added {
		for p, d := range snapshot {
			mustServe(t, c, i, p, d)
		}
	}
	t.Logf("5 voters; new replicas serve %d artifacts", len(snapshot))

	// Scale down, highest ordinals first, as a StatefulSet does.
	// replica-4: stopped, then removed explicitly.
	c.Stop(4)
	deadline := time.Now().Add(time.Minute)
	for {
		err := c.RemoveNode(ctx, 0, 4)
		if err == nil {
			break
		}
		if time.Now().After(deadline) || clusterapi.StatusCode(err) != http.StatusServiceUnavailable {
			t.Fatalf("remove replica-4: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// replica-3: just gone; the dead-server timeout removes it.
	c.Stop(3)
	waitMembers(ctx, t, c, want5[:3], nil)

	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	if f := failure.Load(); f != nil {
		t.Fatalf("serving failed during scaling: %v", f)
	}
	t.Logf("%d reads and %d writes during 3 → 5 → 3, none failed", reads.Load(), len(stored))
	for i := 0; i < 3; i++ {
		for p, d := range stored {
			mustServe(t, c, i, p, d)
		}
	}
}

// TestWipedReplicaRejoins restarts one replica of three on an empty data
// directory: it must not bootstrap a cluster of its own but join the
// running one (demoted to non-voter until caught up), then serve every
// artifact again as a voter.
func TestWipedReplicaRejoins(t *testing.T) {
	c, leader := startCluster(t, 3, membershipArgs, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var results []clusterapi.PutResult
	for n := range 3 {
		results = append(results, put(t, c, leader, fmt.Sprintf("gitrepository/flux-system/wipe/a%d.tar.gz", n), randomContent(int64(200+n), 2<<20)))
	}
	victim := (leader + 1) % 3
	c.Stop(victim)
	if err := c.WipeData(victim); err != nil {
		t.Fatal(err)
	}
	results = append(results, put(t, c, leader, "gitrepository/flux-system/wipe/while-down.tar.gz", randomContent(300, 1<<20)))
	if err := c.StartReplica(victim); err != nil {
		t.Fatal(err)
	}
	sawNonvoter := false
	all := []string{"replica-0", "replica-1", "replica-2"}
	// Wait for the demotion first, then for the promotion back.
	for !sawNonvoter {
		if ctx.Err() != nil {
			t.Fatalf("%s never became a non-voter after losing its data", c.Replicas[victim].ID)
		}
		if s, err := c.Status(ctx, leader); err == nil {
			for _, p := range s.Peers {
				sawNonvoter = sawNonvoter || (p.ID == c.Replicas[victim].ID && p.Suffrage == "Nonvoter")
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	waitMembers(ctx, t, c, all, nil)
	for _, r := range results {
		mustServe(t, c, victim, r.Path, r.Digest)
	}
	st, err := c.Status(ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	lst, err := c.Status(ctx, leader)
	if err != nil {
		t.Fatal(err)
	}
	if st.LeaderID != lst.LeaderID {
		t.Fatalf("wiped replica follows %q, the cluster %q: a second cluster?", st.LeaderID, lst.LeaderID)
	}
}

// waitMembers waits until the leader's configuration holds exactly want,
// all voters, calling observe with every status it sees.
func waitMembers(ctx context.Context, t *testing.T, c *cluster.Cluster, want []string, observe func(clusterapi.Status)) {
	t.Helper()
	if err := c.WaitVoters(ctx, want, observe); err != nil {
		t.Fatal(err)
	}
}
