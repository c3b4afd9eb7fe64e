package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sourceraft/sourceraft/internal/cluster"
)

// serveSizes are the artifact sizes of the serving comparison: most Flux
// artifacts (a small Git source), a typical one, a large chart or OCI
// artifact, and the largest that still fits many in the page cache.
var serveSizes = []struct {
	name string
	size int
	// clients caps -clients: 32 bodies of 100 MiB in flight would let
	// only a handful of requests complete inside a measurement window.
	clients int
}{
	{"10kib", 10 << 10, 0},
	{"1mib", 1 * mib, 0},
	{"20mib", 20 * mib, 0},
	{"100mib", 100 * mib, 8},
}

// serve compares a follower's artifact server with http.FileServer on the
// same bytes, alternating the two so drift (page cache, CPU frequency,
// other load) hits both alike.
func (b *bench) serve(ctx context.Context, c *cluster.Cluster) error {
	fsDir := filepath.Join(b.root, "fileserver")
	fs, err := startFileServer(ctx, fsDir)
	if err != nil {
		return err
	}
	defer fs.stop()

	gen := newLoadGen(b.cfg.clients, b.cfg.warmup, b.cfg.duration)
	defer gen.close()

	for i, sz := range serveSizes {
		content := randomContent(b.cfg.seed*1000+uint64(i), sz.size)
		path := fmt.Sprintf("gitrepository/bench/serve-%s/artifact.tar.gz", sz.name)
		f, err := storeEverywhere(ctx, c, path, content)
		if err != nil {
			return err
		}
		local := filepath.Join(fsDir, filepath.FromSlash(path))
		if err := os.MkdirAll(filepath.Dir(local), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(local, content, 0o644); err != nil {
			return err
		}
		gen.clients = b.cfg.clients
		if sz.clients > 0 {
			gen.clients = min(gen.clients, sz.clients)
		}
		base := &series{name: "fileserver", url: fs.url + "/" + path, pid: fs.pid}
		subj := &series{name: "follower", url: c.ArtifactURL(f, path), pid: c.PID(f)}

		// Both must serve exactly these bytes before either is timed.
		for _, s := range []*series{base, subj} {
			if err := gen.verify(ctx, s.url, content); err != nil {
				return err
			}
		}
		for round := range b.cfg.rounds {
			for _, s := range []*series{base, subj} {
				wait := func() {}
				if round == 0 && s == subj {
					wait = b.cpuProfile(ctx, c.Replicas[f].MetricsAddr, "serve-"+sz.name+"-follower-cpu", b.cfg.warmup+b.cfg.duration)
				}
				err := s.measure(ctx, gen, int64(len(content)))
				wait()
				if err != nil {
					return fmt.Errorf("%s %s round %d: %w", s.name, sz.name, round+1, err)
				}
				fmt.Fprintf(os.Stderr, "   %-6s %-10s round %d: %8.1f req/s %8.1f MB/s  cpu cores: bench process %.2f, server %.2f (%.2f s/GB)\n",
					sz.name, s.name, round+1, s.rps[round], s.mbs[round], s.self[round], s.peer[round], s.cpuPerGB[round])
			}
		}
		st, err := c.Status(ctx, f)
		if err == nil && st.State != "Follower" {
			return fmt.Errorf("%s was measured as a follower but is now %s", c.Replicas[f].ID, st.State)
		}

		bm, sm := median(base.rps), median(subj.rps)
		prefix := "serve_" + sz.name
		b.res.set(prefix+"_ratio_vs_fileserver", round(sm/bm, 3))
		b.res.set(prefix+"_fileserver_req_per_s", round(bm, 1))
		b.res.set(prefix+"_follower_req_per_s", round(sm, 1))
		b.res.set(prefix+"_fileserver_mb_per_s", round(median(base.mbs), 1))
		b.res.set(prefix+"_follower_mb_per_s", round(median(subj.mbs), 1))
		b.res.set(prefix+"_fileserver_rounds_req_per_s", roundAll(base.rps, 1))
		b.res.set(prefix+"_follower_rounds_req_per_s", roundAll(subj.rps, 1))
		b.res.set(prefix+"_follower_id", c.Replicas[f].ID)
		b.res.set(prefix+"_clients", gen.clients)
		b.res.set(prefix+"_bench_process_cpu_cores_during_fileserver", round(median(base.self), 2))
		b.res.set(prefix+"_bench_process_cpu_cores_during_follower", round(median(subj.self), 2))
		b.res.set(prefix+"_follower_process_cpu_cores", round(median(subj.peer), 2))
		b.res.set(prefix+"_fileserver_process_cpu_cores", round(median(base.peer), 2))
		b.res.set(prefix+"_follower_cpu_seconds_per_gb", round(median(subj.cpuPerGB), 3))
		b.res.set(prefix+"_fileserver_cpu_seconds_per_gb", round(median(base.cpuPerGB), 3))
		b.res.detail("serve "+sz.name+" FileServer", "%.1f req/s, %.1f MB/s (median of %v req/s), %.3f CPU s/GB",
			bm, median(base.mbs), roundAll(base.rps, 1), median(base.cpuPerGB))
		b.res.detail("serve "+sz.name+" follower", "%.1f req/s, %.1f MB/s (median of %v req/s), %.3f CPU s/GB, from %s",
			sm, median(subj.mbs), roundAll(subj.rps, 1), median(subj.cpuPerGB), c.Replicas[f].ID)
	}
	return nil
}

// storeEverywhere stores content through the leader, waits until every
// replica has applied it, so the follower serves it locally and never from
// a peer, and returns a follower's index.
func storeEverywhere(ctx context.Context, c *cluster.Cluster, path string, content []byte) (int, error) {
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		return -1, err
	}
	pctx, cancel := context.WithTimeout(ctx, 120*time.Second)
	res, err := c.Put(pctx, leader, path, bytes.NewReader(content), int64(len(content)))
	cancel()
	if err != nil {
		return -1, fmt.Errorf("store %s: %w", path, err)
	}
	if want := digest(content); res.Digest != want {
		return -1, fmt.Errorf("store %s: digest %s, want %s", path, res.Digest, want)
	}
	if err := waitAllApplied(ctx, c, leader, 60*time.Second); err != nil {
		return -1, err
	}
	return follower(c, leader)
}

// series is one server's measurements. CPU use is recorded for context:
// on two cores the clients, the FileServer and the follower compete, and
// CPU seconds per GB served say which server works harder for the bytes.
type series struct {
	name string
	url  string
	pid  int // the server's process
	// per round: req/s, MB/s, CPU cores used by this process and by pid,
	// and pid's CPU seconds per 10^9 bytes it sent
	rps, mbs, self, peer, cpuPerGB []float64
}

func (s *series) measure(ctx context.Context, gen *loadGen, size int64) error {
	self0, peer0, t0 := cpuSeconds(os.Getpid()), cpuSeconds(s.pid), time.Now()
	lr, err := gen.run(ctx, s.url, size)
	if err != nil {
		return err
	}
	wall := time.Since(t0).Seconds()
	peer := cpuSeconds(s.pid) - peer0
	s.self = append(s.self, (cpuSeconds(os.Getpid())-self0)/wall)
	s.peer = append(s.peer, peer/wall)
	s.cpuPerGB = append(s.cpuPerGB, peer/(float64(lr.allBytes)/1e9))
	s.rps = append(s.rps, lr.reqPerSec())
	s.mbs = append(s.mbs, lr.mbPerSec())
	return nil
}

// cpuSeconds is the user+system CPU time a process has used so far, from
// /proc/<pid>/stat; 0 when it cannot be read, which only blurs a
// context figure.
func cpuSeconds(pid int) float64 {
	if pid == 0 {
		return 0
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name may hold spaces; fields after it are positional.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(data[i+1:]))
	// utime and stime are fields 14 and 15 of the whole line, 12 and 13
	// after the name; the clock tick is 100 Hz on Linux.
	if len(f) < 13 {
		return 0
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return (ut + st) / 100
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// loadGen is a closed-loop load generator: each client issues its next
// request as soon as the previous body is fully read, over keep-alive
// connections of one shared transport.
type loadGen struct {
	clients          int
	warmup, duration time.Duration
	tr               *http.Transport
	client           *http.Client
}

func newLoadGen(clients int, warmup, duration time.Duration) *loadGen {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        4 * clients,
		MaxIdleConnsPerHost: max(32, 2*clients),
		IdleConnTimeout:     90 * time.Second,
		// Artifacts are already gzip; asking for gzip would only add work.
		DisableCompression: true,
		ForceAttemptHTTP2:  false,
	}
	return &loadGen{clients: clients, warmup: warmup, duration: duration, tr: tr, client: &http.Client{Transport: tr}}
}

func (g *loadGen) close() { g.tr.CloseIdleConnections() }

type loadResult struct {
	requests int64
	bytes    int64
	elapsed  time.Duration
	// allBytes is every body byte received, warm-up and requests cut off
	// at the window's end included: what the server's CPU time paid for.
	allBytes int64
}

func (r loadResult) reqPerSec() float64 { return float64(r.requests) / r.elapsed.Seconds() }

// mbPerSec is in MB of 10^6 bytes.
func (r loadResult) mbPerSec() float64 { return float64(r.bytes) / 1e6 / r.elapsed.Seconds() }

// maxRequestsPerClient bounds a client's loop should a measurement window
// somehow never end; no real run comes near it.
const maxRequestsPerClient = 1 << 22

// run counts the requests that complete inside the window after warm-up.
// Requests still in flight when the window closes are cancelled, not
// waited for, so a measurement never outlasts warm-up plus duration by
// more than the time to notice.
func (g *loadGen) run(parent context.Context, url string, size int64) (loadResult, error) {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	from := time.Now().Add(g.warmup)
	to := from.Add(g.duration)
	stop := time.AfterFunc(time.Until(to), cancel)
	defer stop.Stop()

	var (
		reqs, byts, all atomic.Int64
		errOnce         sync.Once
		firstErr        error
		wg              sync.WaitGroup
	)
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err })
		cancel()
	}
	for range g.clients {
		wg.Go(func() {
			buf := make([]byte, 256<<10)
			for n := 0; n < maxRequestsPerClient && ctx.Err() == nil; n++ {
				got, err := g.fetch(ctx, url, buf, nil)
				all.Add(got)
				if ctx.Err() != nil {
					return // the window closed mid-request: neither counted nor an error
				}
				if err != nil {
					fail(err)
					return
				}
				if got != size {
					fail(fmt.Errorf("%s: read %d bytes, want %d", url, got, size))
					return
				}
				if now := time.Now(); now.After(from) && now.Before(to) {
					reqs.Add(1)
					byts.Add(got)
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return loadResult{}, firstErr
	}
	if err := parent.Err(); err != nil {
		return loadResult{}, err
	}
	if reqs.Load() == 0 {
		return loadResult{}, errors.New("no request completed inside the measurement window")
	}
	return loadResult{requests: reqs.Load(), bytes: byts.Load(), elapsed: g.duration, allBytes: all.Load()}, nil
}

// fetch GETs url and reads the whole body into buf, a chunk at a time,
// discarding it; with sum set, the body is also hashed.
func (g *loadGen) fetch(ctx context.Context, url string, buf []byte, sum io.Writer) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := g.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return 0, fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(msg))
	}
	// Not io.Copy: io.Discard's ReadFrom would read in 8 KiB pieces
	// whatever buffer is given.
	var n int64
	for {
		k, err := resp.Body.Read(buf)
		n += int64(k)
		if sum != nil {
			sum.Write(buf[:k])
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("GET %s: body after %d bytes: %w", url, n, err)
		}
	}
}

func (g *loadGen) verify(ctx context.Context, url string, content []byte) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	h := sha256.New()
	n, err := g.fetch(ctx, url, make([]byte, 256<<10), h)
	if err != nil {
		return err
	}
	want := sha256.Sum256(content)
	if n != int64(len(content)) || !bytes.Equal(h.Sum(nil), want[:]) {
		return fmt.Errorf("GET %s: %d bytes that do not match the stored content (%d bytes)", url, n, len(content))
	}
	return nil
}
