package e2e

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sourceraft/sourceraft/clusterapi"
)

func TestOversizedUploadIsRejectedAndLeavesNothing(t *testing.T) {
	c, leader := startCluster(t, 3, []string{"--max-artifact-size=8388608"}, nil)
	follower := (leader + 1) % 3
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	content := randomContent(9, 9<<20)
	// Declared length beyond the limit, through a follower that forwards.
	_, err := c.Put(ctx, follower, "bucket/default/b/too-big.tar.gz", bytes.NewReader(content), int64(len(content)))
	if clusterapi.StatusCode(err) != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized PUT with Content-Length: %v, want 413", err)
	}
	// No declared length: the limit must hold while streaming.
	_, err = c.Put(ctx, leader, "bucket/default/b/too-big.tar.gz", io.MultiReader(bytes.NewReader(content)), -1)
	if clusterapi.StatusCode(err) != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized chunked PUT: %v, want 413", err)
	}
	ok := put(t, c, leader, "bucket/default/b/fits.tar.gz", content[:8<<20])
	st, err := c.Status(ctx, leader)
	if err != nil {
		t.Fatal(err)
	}
	for i := range c.Replicas {
		if err := c.WaitApplied(ctx, i, st.CommitIndex); err != nil {
			t.Fatal(err)
		}
		st, err := c.Status(ctx, i)
		if err != nil {
			t.Fatal(err)
		}
		if st.Artifacts != 1 || st.Uploads != 0 {
			t.Fatalf("%s after rejected uploads: %d artifacts, %d uploads; want 1, 0", c.Replicas[i].ID, st.Artifacts, st.Uploads)
		}
		mustServe(t, c, i, ok.Path, ok.Digest)
		// The Raft gauges follow the replica's own state.
		want := []string{"source_controller_raft_leader 0"}
		if i == leader {
			want = []string{"source_controller_raft_leader 1", `source_controller_storage_operations_total{operation="store",outcome="error"} 1`, `source_controller_storage_operations_total{operation="store",outcome="success"} 1`}
		}
		m := scrape(ctx, t, c.Replicas[i])
		for _, w := range want {
			if !strings.Contains(m, w) {
				t.Fatalf("%s /metrics lacks %q:\n%s", c.Replicas[i].ID, w, grepLines(m, "source_controller_"))
			}
		}
	}
}

func TestBinaryRefusesPlaintextRaftWithoutInsecureFlag(t *testing.T) {
	out, err := exec.Command(binary, "--node-id=a", "--raft-addr=127.0.0.1:0", "--storage-path="+t.TempDir(),
		"--storage-addr=127.0.0.1:0", "--api-addr=127.0.0.1:0", "--health-addr=127.0.0.1:0", "--metrics-addr=127.0.0.1:0").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("started without certificates: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--raft-insecure") {
		t.Fatalf("refusal does not say how to proceed:\n%s", out)
	}
}
