package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sourceraft/sourceraft/internal/cluster"
	"github.com/sourceraft/sourceraft/internal/filetest"
	"github.com/sourceraft/sourceraft/storage"
)

// corruptBlob flips one byte of a blob file in a stopped replica's store.
func corruptBlob(t *testing.T, r *cluster.Replica, digest string, off int64) {
	t.Helper()
	filetest.FlipByte(t, filepath.Join(r.Dir, "data", "blobs", "sha256", strings.TrimPrefix(digest, "sha256:")), off)
}

// TestCorruptBlobIsNeverServed corrupts a follower's blob files on disk: a
// small one is checked before its first byte and served from an intact
// peer, a large one streams through the hash and is cut off before its
// end, wrong bytes never pass as the artifact, both are repaired from a
// peer, and with the scrub on a corrupt file is found and repaired
// without any download.
func TestCorruptBlobIsNeverServed(t *testing.T) {
	scrub := false
	victim := -1
	wrap := func(r *cluster.Replica, argv []string) []string {
		if r.ID == fmt.Sprintf("replica-%d", victim) && !scrub {
			return append(argv, "--scrub-rate=0")
		}
		return argv
	}
	c, leader := startCluster(t, 3, nil, wrap)
	victim = (leader + 1) % 3
	big := put(t, c, leader, "ocirepository/default/app/app.tar.gz", randomContent(7, 3*storage.MaxChunkSize))
	small := put(t, c, leader, "ocirepository/default/small/app.tar.gz", randomContent(8, 10<<10))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Only a replica that applied the artifact serves it from its own disk.
	caughtUp := func() {
		t.Helper()
		l, err := c.WaitLeader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		st, err := c.Status(ctx, l)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.WaitApplied(ctx, victim, st.CommitIndex); err != nil {
			t.Fatal(err)
		}
	}
	caughtUp()
	mustServe(t, c, victim, big.Path, big.Digest)
	c.Stop(victim)
	corruptBlob(t, c.Replicas[victim], big.Digest, 150)
	corruptBlob(t, c.Replicas[victim], small.Digest, 150)
	if err := c.StartReplica(victim); err != nil {
		t.Fatal(err)
	}
	caughtUp()
	// The small one is checked before any byte goes out: served from a
	// peer, and counted as a server-side error on the victim.
	mustServe(t, c, victim, small.Path, small.Digest)
	if m := scrape(ctx, t, c.Replicas[victim]); !strings.Contains(m, `source_controller_http_request_errors_total{listener="artifacts",method="GET"} 1`) {
		t.Fatalf("corruption not counted on %s:\n%s", c.Replicas[victim].ID, grepLines(m, "errors_total"))
	}
	code, got, err := get(ctx, c.ArtifactURL(victim, big.Path))
	if err == nil && got != big.Digest {
		t.Fatalf("corrupt bytes served as a complete download (code %d, digest %s)", code, got)
	}
	if err == nil {
		t.Fatal("download of a corrupt blob completed")
	}
	t.Logf("corrupt first download cut: %v", err)
	waitRepaired(ctx, t, c, victim, 2)
	mustServe(t, c, victim, big.Path, big.Digest)
	mustServe(t, c, victim, small.Path, small.Digest)
	m := scrape(ctx, t, c.Replicas[victim])
	for _, want := range []string{`source_controller_blob_checks_total{result="corrupt"} 2`, `source_controller_blob_checks_total{result="repaired"} 2`} {
		if !strings.Contains(m, want) {
			t.Fatalf("%s lacks %s:\n%s", c.Replicas[victim].ID, want, grepLines(m, "blob_checks"))
		}
	}

	// With the scrub on, nobody has to download it first.
	c.Stop(victim)
	corruptBlob(t, c.Replicas[victim], big.Digest, 3*storage.MaxChunkSize-10)
	scrub = true
	if err := c.StartReplica(victim); err != nil {
		t.Fatal(err)
	}
	waitRepaired(ctx, t, c, victim, 1)
	mustServe(t, c, victim, big.Path, big.Digest)
	// The other replicas are unaffected.
	for i := range c.Replicas {
		if i != victim {
			mustServe(t, c, i, big.Path, big.Digest)
		}
	}
}

// waitRepaired waits until replica i reports n blobs repaired.
func waitRepaired(ctx context.Context, t *testing.T, c *cluster.Cluster, i int, n uint64) {
	t.Helper()
	for {
		st, err := c.Status(ctx, i)
		if err == nil && st.Integrity.Repaired >= n {
			if st.Integrity.Corrupt < n {
				t.Fatalf("%s: %+v: repaired more than it found corrupt", c.Replicas[i].ID, st.Integrity)
			}
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %d blobs not repaired: %+v, %v", c.Replicas[i].ID, n, st.Integrity, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TestDiskFullReplica fills one follower's disk (a tmpfs of its own): the
// cluster keeps committing, the full replica says why it is not ready and
// keeps serving what it has, and once space is back it catches up intact.
func TestDiskFullReplica(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts a small tmpfs as one replica's disk and must run as root")
	}
	var mounted string
	mountSmall := func(r *cluster.Replica, argv []string) []string {
		if r.ID == "replica-2" && mounted == "" {
			dir := filepath.Join(r.Dir, "data")
			if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", dir).CombinedOutput(); err != nil {
				t.Fatalf("mount tmpfs: %v: %s", err, out)
			}
			mounted = dir
			t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
		}
		return argv
	}
	c := newCluster(t, cluster.Options{Replicas: 3, Wrap: mountSmall})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// The small replica joins a cluster that already has a leader, so it
	// starts as a follower.
	for _, i := range []int{0, 1} {
		if err := c.StartReplica(i); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := leaderAmong(ctx, c, 0, 1); err != nil {
		t.Fatal(err)
	}
	if err := c.StartReplica(2); err != nil {
		t.Fatal(err)
	}
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if leader == 2 {
		t.Fatal("the small replica became leader despite joining late")
	}
	small := put(t, c, leader, "helmchart/default/small/small-1.0.0.tgz", randomContent(1, 6<<20))
	mustServe(t, c, 2, small.Path, small.Digest)

	big := put(t, c, leader, "helmchart/default/big/big-1.0.0.tgz", randomContent(2, 48<<20))
	var st statusView
	deadline := time.Now().Add(time.Minute)
	for {
		st = readStatus(ctx, t, c, 2)
		if st.LogError != "" || st.FSMError != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("full replica reports no error: %+v", st)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("full replica reports: log %q fsm %q", st.LogError, st.FSMError)
	if !strings.Contains(st.LogError+st.FSMError, "no space left") {
		t.Fatalf("error does not say the disk is full: %+v", st)
	}
	if code := readyz(ctx, c.Replicas[2]); code != http.StatusServiceUnavailable {
		t.Fatalf("full replica /readyz = %d, want 503", code)
	}
	// What it has it serves itself, intact; what it lacks comes from a peer.
	mustServeLocally(t, c, 2, small.Path, small.Digest)
	mustServe(t, c, 2, small.Path, small.Digest)
	mustServe(t, c, 2, big.Path, big.Digest)

	if out, err := exec.Command("mount", "-o", "remount,size=512m", mounted).CombinedOutput(); err != nil {
		t.Fatalf("grow tmpfs: %v: %s", err, out)
	}
	ls := readStatus(ctx, t, c, leader)
	if err := c.WaitApplied(ctx, 2, ls.CommitIndex); err != nil {
		t.Fatal(err)
	}
	st = readStatus(ctx, t, c, 2)
	if st.LogError != "" || st.FSMError != "" || st.Artifacts != ls.Artifacts || st.Bytes != ls.Bytes {
		t.Fatalf("after space came back: %+v; leader has %d artifacts / %d bytes", st, ls.Artifacts, ls.Bytes)
	}
	if code := readyz(ctx, c.Replicas[2]); code != http.StatusOK {
		t.Fatalf("recovered replica /readyz = %d, want 200", code)
	}
	// Served locally now: stop the others and read it from the recovered one.
	c.Stop(0)
	c.Stop(1)
	mustServe(t, c, 2, big.Path, big.Digest)
	mustServe(t, c, 2, small.Path, small.Digest)
}

type statusView struct {
	LogError, FSMError string
	Artifacts          int
	Bytes              int64
	CommitIndex        uint64
}

func readStatus(ctx context.Context, t *testing.T, c *cluster.Cluster, i int) statusView {
	t.Helper()
	s, err := c.Status(ctx, i)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(s)
	var v statusView
	_ = json.Unmarshal(b, &v)
	return v
}

func readyz(ctx context.Context, r *cluster.Replica) int {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.HealthAddr+"/readyz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func leaderAmong(ctx context.Context, c *cluster.Cluster, ids ...int) (int, error) {
	for {
		for _, i := range ids {
			if s, err := c.Status(ctx, i); err == nil && s.State == "Leader" {
				return i, nil
			}
		}
		select {
		case <-ctx.Done():
			return -1, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func scrape(ctx context.Context, t *testing.T, r *cluster.Replica) string {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.MetricsAddr+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
