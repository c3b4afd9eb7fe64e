package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/internal/cluster"
)

// vmRSS is the resident set of a process in bytes, from /proc.
func vmRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS for pid %d", pid)
	return 0
}

// TestStalledClientsAreCutAndConsumersServed: 200 connections that send
// a GET and never read, and one upload trickling at 1 byte per 2 s, are
// closed within the idle timeouts while a consumer keeps downloading and
// verifying the artifact, and the replica's memory stays bounded.
func TestStalledClientsAreCutAndConsumersServed(t *testing.T) {
	const idle = 2 * time.Second
	c, leader := startCluster(t, 3, []string{"--write-idle-timeout=" + idle.String(), "--read-idle-timeout=" + idle.String()}, nil)
	victim := (leader + 1) % 3
	r := c.Replicas[victim]
	const path = "gitrepository/default/big/big.tar.gz"
	res := put(t, c, leader, path, randomContent(80, 4<<20))
	mustServe(t, c, victim, path, res.Digest)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	base := vmRSS(t, c.PID(victim))

	start := time.Now()
	var stalled []net.Conn
	for range 200 {
		conn, err := net.Dial("tcp", r.StorageAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.(*net.TCPConn).SetReadBuffer(4 << 10)
		if _, err := fmt.Fprintf(conn, "GET /%s HTTP/1.1\r\nHost: e2e\r\n\r\n", path); err != nil {
			t.Fatal(err)
		}
		stalled = append(stalled, conn)
	}
	trickleDone := make(chan time.Duration, 1)
	go func() { trickleDone <- trickle(r.APIAddr, c.Token, path) }()

	// A consumer downloading meanwhile is not held up.
	var wg sync.WaitGroup
	consumerErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 10 {
			code, got, err := get(ctx, c.ArtifactURL(victim, path))
			if err == nil && (code != http.StatusOK || got != res.Digest) {
				err = fmt.Errorf("GET: %d digest %s, want %s", code, got, res.Digest)
			}
			if err != nil {
				consumerErr <- err
				return
			}
		}
	}()

	peak := base
	sample := func() {
		if v := vmRSS(t, c.PID(victim)); v > peak {
			peak = v
		}
	}
	// Reading nothing, the stalled connections must be reset within the
	// idle timeout (plus the time to start them all and some slack).
	for time.Since(start) < idle+5*time.Second {
		sample()
		time.Sleep(100 * time.Millisecond)
	}
	for i, conn := range stalled {
		// A reset connection fails at once; an open one would deliver bytes
		// until the deadline.
		_ = conn.SetReadDeadline(time.Now().Add(time.Second))
		_, err := io.Copy(io.Discard, conn)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("stalled connection %d still open %v after it stopped reading", i, time.Since(start))
		}
	}
	wg.Wait()
	select {
	case err := <-consumerErr:
		t.Fatalf("consumer failed while stalled clients were connected: %v", err)
	default:
	}
	held := <-trickleDone
	if held > idle+5*time.Second {
		t.Fatalf("trickling upload held for %v with a %v read idle timeout", held, idle)
	}
	sample()
	m := scrape(ctx, t, r)
	if n := metricValue(m, `source_controller_http_limited_total{limit="write_idle_timeout",listener="artifacts"}`); n < 200 {
		t.Errorf("%v stalled downloads counted as cut, want 200:\n%s", n, grepLines(m, "limited_total"))
	}
	if n := metricValue(m, `source_controller_http_limited_total{limit="read_idle_timeout",listener="api"}`); n != 1 {
		t.Errorf("%v trickling bodies counted as cut, want 1:\n%s", n, grepLines(m, "limited_total"))
	}
	t.Logf("200 stalled downloads reset within %v; trickling upload held %v; RSS %d MiB before, peak %d MiB",
		idle+5*time.Second, held.Round(time.Millisecond), base>>20, peak>>20)
	// Each stalled download holds at most a chunk buffer until it is cut.
	if rise := peak - base; rise > 160<<20 {
		t.Errorf("RSS rose by %d MiB", rise>>20)
	}
	mustServe(t, c, victim, path, res.Digest)
	// The consumer's own keep-alive connections would stay until IdleTimeout.
	http.DefaultClient.CloseIdleConnections()
	checkOpenConnections(ctx, t, r)
}

// checkOpenConnections waits until the artifact listener holds no
// connection: every cut one was closed and released its slot.
func checkOpenConnections(ctx context.Context, t *testing.T, r *cluster.Replica) {
	t.Helper()
	for {
		m := scrape(ctx, t, r)
		n := metricValue(m, `source_controller_http_connections_open{listener="artifacts"}`)
		if n == 0 {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("%v artifact connections still open", n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// trickle sends an upload's body at 1 byte per 2 s and returns how long
// the replica held it.
func trickle(addr, token, path string) time.Duration {
	start := time.Now()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return 0
	}
	defer conn.Close()
	fmt.Fprintf(conn, "PUT %s HTTP/1.1\r\nHost: e2e\r\nAuthorization: Bearer %s\r\nContent-Length: 100000\r\n\r\n", clusterapi.ArtifactPath(path), token)
	gone := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, conn)
		close(gone)
	}()
	for {
		select {
		case <-gone:
			return time.Since(start)
		case <-time.After(2 * time.Second):
			if _, err := conn.Write([]byte("x")); err != nil {
				return time.Since(start)
			}
		}
		if time.Since(start) > time.Minute {
			return time.Since(start)
		}
	}
}

func TestBinaryRefusesEmptyTokenFile(t *testing.T) {
	for _, content := range []string{"", " \n\t\n"} {
		file := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(binary, "--node-id=a", "--raft-addr=127.0.0.1:0", "--storage-path="+t.TempDir(), "--raft-insecure",
			"--storage-addr=127.0.0.1:0", "--api-addr=127.0.0.1:0", "--health-addr=127.0.0.1:0", "--metrics-addr=127.0.0.1:0",
			"--api-token-file="+file).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() == 0 {
			t.Fatalf("started with token file %q: %v\n%s", content, err, out)
		}
		if !strings.Contains(string(out), file) || !strings.Contains(string(out), "no token") {
			t.Fatalf("refusal does not name the file and the reason:\n%s", out)
		}
	}
}
