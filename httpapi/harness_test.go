package httpapi

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/sourceraft/sourceraft/clusterapi"
)

const testToken = "s3cret"

// testNode is one replica's listeners on loopback over a memBackend.
type testNode struct {
	id       string
	b        *memBackend
	logs     *syncBuffer
	artifact string // host:port of each listener
	api      string
	health   string
	metrics  string
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startNode(t *testing.T, id string, tweak func(*Config)) *testNode {
	t.Helper()
	n := &testNode{id: id, b: newMemBackend(t, id), logs: &syncBuffer{}}
	logger := slog.New(slog.NewTextHandler(n.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := Config{
		Backend:         n.b,
		APIToken:        testToken,
		MaxArtifactSize: 1 << 20,
		PeerWait:        2 * time.Second,
		Logger:          logger,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	srv := NewServer(
		Listener{Name: "artifacts", Addr: "127.0.0.1:0", Handler: NewArtifactServer(cfg)},
		Listener{Name: "health", Addr: "127.0.0.1:0", Handler: NewHealthServer(cfg)},
		Listener{Name: "metrics", Addr: "127.0.0.1:0", Handler: NewMetricsServer(true)},
		Listener{Name: "api", Addr: "127.0.0.1:0", Handler: NewAPIServer(cfg)},
	)
	srv.Logger = logger
	srv.ShutdownTimeout = 5 * time.Second
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	n.artifact, n.api, n.health, n.metrics = srv.Addr("artifacts"), srv.Addr("api"), srv.Addr("health"), srv.Addr("metrics")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: Run: %v", id, err)
		}
		if t.Failed() {
			t.Logf("%s logs:\n%s", id, n.logs.String())
		}
	})
	return n
}

// formCluster makes every node list every other one in Status, leader included.
func formCluster(leader *testNode, nodes ...*testNode) {
	var peers []clusterapi.Peer
	for _, n := range nodes {
		peers = append(peers, clusterapi.Peer{
			ID: n.id, RaftAddr: n.id + ":7000", APIAddr: n.api, StorageAddr: n.artifact,
			Suffrage: "Voter", Leader: leader != nil && n == leader,
		})
	}
	for _, n := range nodes {
		n.b.setStatus(func(s *clusterapi.Status) {
			s.Peers = peers
			s.LeaderID, s.LeaderAddr, s.State = "", "", "Candidate"
			if leader != nil {
				s.LeaderID, s.LeaderAddr, s.State = leader.id, leader.id+":7000", "Follower"
				if n == leader {
					s.State = "Leader"
				}
			}
		})
	}
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	return b
}

var testClient = &http.Client{Timeout: 20 * time.Second}

func do(t *testing.T, method, url string, body io.Reader, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return resp, b
}

// rawGet sends the request target byte for byte, so no client-side URL
// cleaning hides what the server would do with it.
func rawGet(t *testing.T, addr, target string) (int, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, "GET "+target+" HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("GET %q: %v", target, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func countLines(s, substr string) int {
	n := 0
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}
