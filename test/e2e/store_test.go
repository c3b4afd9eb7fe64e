package e2e

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestReplicatedStoreSurvivesLeaderKill is the availability claim end to
// end: a 50 MiB artifact stored through a follower is served byte-identical
// by every replica, a SIGKILLed leader costs the survivors' readers nothing,
// the new leader accepts writes, the old leader catches up on restart, and
// garbage collection removes superseded artifacts on every replica.
func TestReplicatedStoreSurvivesLeaderKill(t *testing.T) {
	c, leader := startCluster(t, 3, []string{
		"--gc-interval=1s", "--artifact-retention-ttl=3s", "--artifact-retention-records=2",
	}, nil)
	follower := (leader + 1) % 3

	big := randomContent(50, 50<<20)
	res := put(t, c, follower, "gitrepository/flux-system/big/big.tar.gz", big)
	for i := range c.Replicas {
		mustServe(t, c, i, res.Path, res.Digest)
	}

	// Readers on the two replicas that survive, while the leader is killed.
	var survivors []int
	for i := range c.Replicas {
		if i != leader {
			survivors = append(survivors, i)
		}
	}
	var (
		reads, failures atomic.Int64
		firstErr        atomic.Value
		wg              sync.WaitGroup
	)
	stop := make(chan struct{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, i := range survivors {
		for w := 0; w < 2; w++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				for n := 0; n < 500; n++ {
					select {
					case <-stop:
						return
					default:
					}
					code, d, err := get(ctx, c.ArtifactURL(i, res.Path))
					reads.Add(1)
					if err != nil || code != http.StatusOK || d != res.Digest {
						failures.Add(1)
						firstErr.CompareAndSwap(nil, fmt.Sprintf("%s: code %d digest %s err %v", c.Replicas[i].ID, code, d, err))
					}
				}
			}(i)
		}
	}
	time.Sleep(time.Second)
	before := reads.Load()
	c.Kill(leader)
	killed := time.Now()

	newLeader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("new leader %s after %v", c.Replicas[newLeader].ID, time.Since(killed))
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	if f := failures.Load(); f != 0 {
		t.Fatalf("%d of %d reads failed on the survivors; first: %v", f, reads.Load(), firstErr.Load())
	}
	if reads.Load()-before < 4 {
		t.Fatalf("only %d reads ran across the leader's death", reads.Load()-before)
	}
	t.Logf("%d reads of 50 MiB on the survivors, 0 failed", reads.Load())

	second := put(t, c, newLeader, "gitrepository/flux-system/second/second.tar.gz", randomContent(2, 3<<20+17))
	for _, i := range survivors {
		mustServe(t, c, i, second.Path, second.Digest)
	}

	// The old leader restarts on its data and catches up by itself.
	if err := c.StartReplica(leader); err != nil {
		t.Fatal(err)
	}
	st, err := c.Status(ctx, newLeader)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitApplied(ctx, leader, st.CommitIndex); err != nil {
		t.Fatal(err)
	}
	old, err := c.Status(ctx, leader)
	if err != nil {
		t.Fatal(err)
	}
	if old.Artifacts != st.Artifacts || old.Bytes != st.Bytes {
		t.Fatalf("restarted replica holds %d artifacts / %d bytes, leader %d / %d", old.Artifacts, old.Bytes, st.Artifacts, st.Bytes)
	}
	mustServe(t, c, leader, second.Path, second.Digest)
	mustServe(t, c, leader, res.Path, res.Digest)

	// Garbage collection: three revisions of one source; once the TTL has
	// passed only the current one remains, on every replica.
	var revs []string
	for r := 0; r < 3; r++ {
		p := put(t, c, newLeader, fmt.Sprintf("gitrepository/flux-system/gc-app/rev%d.tar.gz", r), randomContent(int64(100+r), 1<<20))
		revs = append(revs, p.Path)
		time.Sleep(1100 * time.Millisecond)
	}
	deadline := time.Now().Add(30 * time.Second)
	for i := range c.Replicas {
		for {
			code0, _, _ := get(ctx, c.ArtifactURL(i, revs[0]))
			code1, _, _ := get(ctx, c.ArtifactURL(i, revs[1]))
			if code0 == http.StatusNotFound && code1 == http.StatusNotFound {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still serves superseded revisions (codes %d, %d)", c.Replicas[i].ID, code0, code1)
			}
			time.Sleep(250 * time.Millisecond)
		}
		code, _, err := get(ctx, c.ArtifactURL(i, revs[2]))
		if err != nil || code != http.StatusOK {
			t.Fatalf("%s: current revision gone after GC: %d %v", c.Replicas[i].ID, code, err)
		}
	}
}
