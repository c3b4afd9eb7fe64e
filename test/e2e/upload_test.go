package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/internal/cluster"
)

// uploaderEnv makes the test binary a client that starts an upload and
// then waits to be killed: "addr token path declared-length sent-bytes".
const uploaderEnv = "SOURCERAFT_E2E_UPLOADER"

func init() {
	if spec := os.Getenv(uploaderEnv); spec != "" {
		os.Exit(runUploader(spec))
	}
}

func runUploader(spec string) int {
	f := strings.Fields(spec)
	declared, _ := strconv.Atoi(f[3])
	sent, _ := strconv.Atoi(f[4])
	conn, err := net.Dial("tcp", f[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	hdr := fmt.Sprintf("PUT %s HTTP/1.1\r\nHost: e2e\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n", clusterapi.ArtifactPath(f[2]), f[1], declared)
	if _, err := io.WriteString(conn, hdr); err != nil {
		return 1
	}
	if _, err := conn.Write(randomContent(77, sent)); err != nil {
		return 1
	}
	fmt.Println("sent")
	select {} // until SIGKILL
}

// cutUpload starts an upload of declared bytes, sends only sent of them
// (as chunked without its last chunk when declared < 0) and then
// half-closes the connection; it returns the status or, when the replica
// closed the connection instead, 0.
func cutUpload(t *testing.T, addr, token, path string, declared, sent int) int {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	var req bytes.Buffer
	fmt.Fprintf(&req, "PUT %s HTTP/1.1\r\nHost: e2e\r\nAuthorization: Bearer %s\r\n", clusterapi.ArtifactPath(path), token)
	body := randomContent(78, sent)
	if declared < 0 {
		fmt.Fprintf(&req, "Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n", sent, body)
	} else {
		fmt.Fprintf(&req, "Content-Length: %d\r\n\r\n%s", declared, body)
	}
	if _, err := conn.Write(req.Bytes()); err != nil {
		t.Fatal(err)
	}
	_ = conn.(*net.TCPConn).CloseWrite()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestTruncatedUploadsCommitNothing sends each kind of broken upload to
// the leader and to a follower: the previous artifact must stay what
// every replica serves, and no upload may linger.
func TestTruncatedUploadsCommitNothing(t *testing.T) {
	c, leader := startCluster(t, 3, nil, nil)
	follower := (leader + 1) % 3
	const path = "gitrepository/default/app/app.tar.gz"
	prev := put(t, c, leader, path, randomContent(70, 3<<20))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	var aborts int
	for _, via := range []int{leader, follower} {
		r := c.Replicas[via]
		for _, k := range []struct {
			name     string
			declared int
			sent     int
		}{
			{"Content-Length cut short", 4 << 20, 1<<20 + 17},
			{"chunked without its last chunk", -1, 2<<20 + 5},
		} {
			code := cutUpload(t, r.APIAddr, c.Token, path, k.declared, k.sent)
			if code != 0 && (code < 400 || code > 499) {
				t.Fatalf("%s via %s: answered %d, want 4xx or a closed connection", k.name, r.ID, code)
			}
			t.Logf("%s via %s: %d", k.name, r.ID, code)
			aborts++
		}

		// A client killed mid-upload.
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s %s %d %d", uploaderEnv, r.APIAddr, c.Token, path, 4<<20, 2<<20))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, _ := bufio.NewReader(out).ReadString('\n')
		if line != "sent\n" {
			t.Fatalf("uploader via %s: %q", r.ID, line)
		}
		// Let the replica propose what it has read before the client dies.
		time.Sleep(500 * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		aborts++
	}

	checkNothingCommitted(ctx, t, c, leader, path, prev)
	m := scrape(ctx, t, c.Replicas[leader])
	if n := metricValue(m, `source_controller_uploads_aborted_total{reason="incomplete"}`); n != float64(aborts) {
		t.Errorf("leader counted %v incomplete uploads, want %d:\n%s", n, aborts, grepLines(m, "uploads_aborted"))
	}
	log, _ := os.ReadFile(c.Replicas[leader].Dir + "/log")
	if got := strings.Count(string(log), "upload aborted, nothing committed"); got != aborts {
		t.Errorf("leader logged %d aborted uploads, want %d", got, aborts)
	}
}

// checkNothingCommitted waits until every replica applied the leader's
// commit index and aborted every upload, then checks that each serves
// prev and holds the same content.
func checkNothingCommitted(ctx context.Context, t *testing.T, c *cluster.Cluster, leader int, path string, prev clusterapi.PutResult) {
	t.Helper()
	for i := range c.Replicas {
		for {
			lst, err := c.Status(ctx, leader)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.WaitApplied(ctx, i, lst.CommitIndex); err != nil {
				t.Fatal(err)
			}
			st, err := c.Status(ctx, i)
			if err != nil {
				t.Fatal(err)
			}
			if st.Artifacts != 1 {
				t.Fatalf("%s holds %d artifacts, want 1", c.Replicas[i].ID, st.Artifacts)
			}
			if st.Uploads == 0 {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("%s still holds %d uploads", c.Replicas[i].ID, st.Uploads)
			}
			time.Sleep(200 * time.Millisecond)
		}
		mustServe(t, c, i, path, prev.Digest)
	}
	for {
		hashes, applied := map[string]bool{}, map[uint64]bool{}
		for i := range c.Replicas {
			h, err := c.ContentHash(ctx, i)
			if err != nil {
				t.Fatal(err)
			}
			hashes[h.Hash], applied[h.AppliedIndex] = true, true
		}
		if len(hashes) == 1 {
			return
		}
		if len(applied) == 1 || ctx.Err() != nil {
			t.Fatalf("replicas at one applied index differ in content: %v", hashes)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// metricValue is the value of the sample line starting with series, or -1.
func metricValue(m, series string) float64 {
	for _, l := range strings.Split(m, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}
