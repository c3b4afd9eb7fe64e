// Package e2e runs the real source-controller binary as a replicated
// cluster on loopback and checks what a consumer and an operator see.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/internal/cluster"
)

var binary string

func TestMain(m *testing.M) {
	binary = os.Getenv("SOURCERAFT_BIN")
	if binary == "" {
		dir, err := os.MkdirTemp("", "sourceraft-e2e-bin")
		if err != nil {
			panic(err)
		}
		binary = filepath.Join(dir, "source-controller")
		build := exec.Command("go", "build", "-o", binary, "../../cmd/source-controller")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build source-controller:", err)
			os.Exit(1)
		}
		defer os.RemoveAll(dir)
	}
	code := m.Run()
	os.Exit(code)
}

// startCluster runs n replicas and waits for a leader with every replica
// registered.
func startCluster(t *testing.T, n int, args []string, wrap func(*cluster.Replica, []string) []string) (*cluster.Cluster, int) {
	t.Helper()
	c := newCluster(t, cluster.Options{Replicas: n, Args: args, Wrap: wrap})
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return c, leader
}

// newCluster prepares a cluster of the binary under test whose replica
// logs are printed if the test fails. E2E_KEEP_DIR keeps the replicas'
// data and logs for a post-mortem.
func newCluster(t *testing.T, opts cluster.Options) *cluster.Cluster {
	t.Helper()
	opts.Binary = binary
	opts.Dir = t.TempDir()
	if keep := os.Getenv("E2E_KEEP_DIR"); keep != "" {
		var err error
		if opts.Dir, err = os.MkdirTemp(keep, t.Name()+"-"); err != nil {
			t.Fatal(err)
		}
		t.Logf("cluster directory %s", opts.Dir)
	}
	c, err := cluster.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		if t.Failed() {
			for _, r := range c.Replicas {
				b, _ := os.ReadFile(filepath.Join(r.Dir, "log"))
				t.Logf("---- %s log (last 6 KiB) ----\n%s", r.ID, tail(b, 6<<10))
			}
		}
	})
	return c
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func randomContent(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// get downloads url and returns status and the body's digest; a body that
// ends early is an error.
func get(ctx context.Context, url string) (int, string, error) { return getWith(ctx, url, nil) }

// forwardedHeader marks a request as one replica's to another: it is
// answered from the replica's own store, never relayed from a peer.
const forwardedHeader = "X-Sourceraft-Forwarded"

// getWith is get with extra request headers.
func getWith(ctx context.Context, url string, hdr http.Header) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return resp.StatusCode, "", fmt.Errorf("%s: %s: %s", url, resp.Status, bytes.TrimSpace(msg))
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return resp.StatusCode, "", fmt.Errorf("read body of %s after %d bytes: %w", url, n, err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return resp.StatusCode, "", fmt.Errorf("%s: got %d of %d bytes", url, n, resp.ContentLength)
	}
	return resp.StatusCode, "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// mustServe checks replica i serves path with the wanted digest.
func mustServe(t *testing.T, c *cluster.Cluster, i int, path, digest string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code, got, err := get(ctx, c.ArtifactURL(i, path))
	if err != nil || code != http.StatusOK || got != digest {
		t.Fatalf("%s: GET %s: code %d digest %s err %v; want 200 %s", c.Replicas[i].ID, path, code, got, err, digest)
	}
}

// mustServeLocally checks replica i serves path with the wanted digest
// from its own store, not relayed from a peer.
func mustServeLocally(t *testing.T, c *cluster.Cluster, i int, path, digest string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code, got, err := getWith(ctx, c.ArtifactURL(i, path), http.Header{forwardedHeader: {"e2e"}})
	if err != nil || code != http.StatusOK || got != digest {
		t.Fatalf("%s: GET %s from its own store: code %d digest %s err %v; want 200 %s", c.Replicas[i].ID, path, code, got, err, digest)
	}
}

func put(t *testing.T, c *cluster.Cluster, i int, path string, content []byte) clusterapi.PutResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := c.Put(ctx, i, path, bytes.NewReader(content), int64(len(content)))
	if err != nil {
		t.Fatalf("PUT %s via %s: %v", path, c.Replicas[i].ID, err)
	}
	if res.Digest != digestOf(content) || res.Size != int64(len(content)) {
		t.Fatalf("PUT %s: answered %+v, want digest %s size %d", path, res, digestOf(content), len(content))
	}
	return res
}
