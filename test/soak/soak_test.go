// Package soak runs three replicas of the real binary reconciling and
// serving under steady load for SOAK_DURATION (default 30m) and fails if
// goroutines, open file descriptors, heap or RSS keep growing after
// warm-up, or if any download fails. It is not part of `make test`:
// `make soak` runs it.
package soak

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sourceraft/sourceraft/internal/cluster"
	"github.com/sourceraft/sourceraft/internal/gitserver"
	"github.com/sourceraft/sourceraft/internal/testenv"
)

// series are the samples that must stop growing after warm-up, each with
// the growth over the checked window it tolerates: an absolute floor and
// a fraction of the window's mean, whichever is larger.
//
// process_resident_memory_bytes includes the file-backed pages of the
// Raft log's and the store's mmaps, which grow with the files and are
// page cache the kernel reclaims at will; it is reported, and the check
// on resident memory uses the anonymous part (RssAnon in /proc/<pid>/status).
var series = []struct {
	name     string
	floor    float64
	fraction float64
	checked  bool
}{
	{"go_goroutines", 25, 0.10, true},
	{"process_open_fds", 10, 0.10, true},
	{"go_memstats_heap_inuse_bytes", 16 << 20, 0.25, true},
	{"process_resident_memory_bytes", 32 << 20, 0.20, false},
	{rssAnon, 32 << 20, 0.20, true},
}

// rssAnon names the anonymous resident memory in the samples.
const rssAnon = "rss_anon_bytes"

func TestSoak(t *testing.T) {
	duration := 30 * time.Minute
	if s := os.Getenv("SOAK_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("SOAK_DURATION: %v", err)
		}
		duration = d
	}
	binary := buildBinary(t)
	env, err := testenv.StartEnv()
	if err != nil {
		t.Fatal(err)
	}
	defer env.Stop()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := env.WriteKubeconfig(kubeconfig); err != nil {
		t.Fatal(err)
	}
	gs, err := gitserver.Start(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer gs.Close()

	c, err := cluster.New(cluster.Options{Binary: binary, Dir: t.TempDir(), Replicas: 3,
		Args: []string{"--reconcile", "--kubeconfig=" + kubeconfig, "--gc-interval=10s", "--artifact-retention-ttl=10s"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), duration+10*time.Minute)
	defer cancel()
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	ns, err := env.NewNamespace(ctx, "soak")
	if err != nil {
		t.Fatal(err)
	}

	const sources = 4
	var repos []*gitserver.Repo
	for i := range sources {
		name := fmt.Sprintf("app%d", i)
		repo, err := gs.NewRepo(name, filepath.Join(t.TempDir(), name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := repo.Commit("initial", files(name, 0)); err != nil {
			t.Fatal(err)
		}
		repos = append(repos, repo)
		obj := &sourcev1.GitRepository{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: sourcev1.GitRepositorySpec{
				URL: gs.URL + "/" + name + ".git", Interval: metav1.Duration{Duration: 5 * time.Second},
				Reference: &sourcev1.GitRepositoryRef{Branch: "master"},
			},
		}
		if err := env.Client.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}

	var (
		downloads, failures atomic.Int64
		superseded          atomic.Int64 // downloads of an artifact replaced meanwhile
		mu                  sync.Mutex
		failed              []string
	)
	fail := func(format string, args ...any) {
		failures.Add(1)
		mu.Lock()
		defer mu.Unlock()
		if len(failed) < 20 {
			failed = append(failed, fmt.Sprintf(format, args...))
		}
	}
	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	// A commit to one repository every 3 s: new artifacts, and GC of the old.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 1; ; n++ {
			select {
			case <-loadCtx.Done():
				return
			case <-time.After(3 * time.Second):
			}
			repo := repos[n%sources]
			if _, err := repo.Commit(fmt.Sprintf("change %d", n), files(fmt.Sprintf("app%d", n%sources), n)); err != nil {
				fail("commit: %v", err)
			}
		}
	}()
	// Consumers: every current artifact from a random replica, verified.
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewSource(int64(w)))
			for loadCtx.Err() == nil {
				var list sourcev1.GitRepositoryList
				if err := env.Client.List(loadCtx, &list, client.InNamespace(ns)); err != nil {
					continue
				}
				for _, o := range list.Items {
					if o.Status.Artifact == nil || loadCtx.Err() != nil {
						continue
					}
					u, _ := url.Parse(o.Status.Artifact.URL)
					i := rnd.Intn(len(c.Replicas))
					downloads.Add(1)
					err := download(loadCtx, c.ArtifactURL(i, u.Path[1:]), o.Status.Artifact.Digest)
					if err == nil || loadCtx.Err() != nil {
						continue
					}
					// Retention may remove an artifact the moment a newer one is
					// stored, before the status names the newer: a failure only
					// if the status still names it.
					var now sourcev1.GitRepository
					if gerr := env.Client.Get(loadCtx, client.ObjectKeyFromObject(&o), &now); gerr == nil &&
						now.Status.Artifact != nil && now.Status.Artifact.URL != o.Status.Artifact.URL {
						superseded.Add(1)
						continue
					}
					fail("%s from %s: %v", u.Path, c.Replicas[i].ID, err)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
	}
	// A writer through the internal API of a random replica, read back
	// from another: a new file of one of three objects each time, so
	// retention keeps the store from growing. (Overwriting one path would
	// be read back stale from a replica that has not applied it yet.)
	wg.Add(1)
	go func() {
		defer wg.Done()
		rnd := rand.New(rand.NewSource(99))
		for n := 0; loadCtx.Err() == nil; n++ {
			body := make([]byte, 256<<10+rnd.Intn(1<<20))
			rnd.Read(body)
			p := fmt.Sprintf("bucket/soak/blob%d/%d.tar.gz", n%3, n)
			res, err := c.Put(loadCtx, rnd.Intn(3), p, bytes.NewReader(body), int64(len(body)))
			if err != nil {
				if loadCtx.Err() == nil {
					fail("put %s: %v", p, err)
				}
				continue
			}
			downloads.Add(1)
			if err := download(loadCtx, c.ArtifactURL(rnd.Intn(3), p), res.Digest); err != nil && loadCtx.Err() == nil {
				fail("%s after put: %v", p, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}()

	// Samples every 10 s; the first third is warm-up.
	start := time.Now()
	samples := make([][]sample, len(c.Replicas))
	for time.Since(start) < duration {
		for i, r := range c.Replicas {
			s, err := scrape(ctx, r)
			if err != nil {
				t.Fatalf("%s: %v", r.ID, err)
			}
			if s.v[rssAnon], err = anonRSS(c.PID(i)); err != nil {
				t.Fatalf("%s: %v", r.ID, err)
			}
			s.at = time.Since(start)
			samples[i] = append(samples[i], s)
		}
		time.Sleep(10 * time.Second)
	}
	stopLoad()
	wg.Wait()

	t.Logf("soak: %v, 3 replicas, %d downloads, %d failures, %d of an artifact superseded meanwhile", duration, downloads.Load(), failures.Load(), superseded.Load())
	for i, r := range c.Replicas {
		ss := samples[i]
		window := ss[len(ss)/3:]
		for _, sr := range series {
			slope, mean := trend(window, sr.name)
			growth := slope * (window[len(window)-1].at - window[0].at).Seconds()
			t.Logf("%s %s: %s at warm-up end, %s at the end, trend %+.0f over the last two thirds (tolerated %.0f)",
				r.ID, sr.name, human(sr.name, window[0].v[sr.name]), human(sr.name, ss[len(ss)-1].v[sr.name]), growth, max(sr.floor, sr.fraction*mean))
			if sr.checked && growth > max(sr.floor, sr.fraction*mean) {
				t.Errorf("%s: %s keeps growing: %+.0f over the last two thirds (mean %.0f)", r.ID, sr.name, growth, mean)
			}
		}
	}
	if failures.Load() > 0 {
		t.Errorf("%d failures, first ones: %s", failures.Load(), strings.Join(failed, "; "))
	}
	if downloads.Load() == 0 {
		t.Error("no downloads")
	}
}

type sample struct {
	at time.Duration
	v  map[string]float64
}

// trend is the least-squares slope (per second) and mean of one series.
func trend(ss []sample, name string) (float64, float64) {
	var n, sx, sy, sxx, sxy float64
	for _, s := range ss {
		x, y := s.at.Seconds(), s.v[name]
		n++
		sx, sy, sxx, sxy = sx+x, sy+y, sxx+x*x, sxy+x*y
	}
	if d := n*sxx - sx*sx; d != 0 {
		return (n*sxy - sx*sy) / d, sy / n
	}
	return 0, sy / n
}

func human(name string, v float64) string {
	if strings.HasSuffix(name, "_bytes") {
		return fmt.Sprintf("%.1f MiB", v/(1<<20))
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

func scrape(ctx context.Context, r *cluster.Replica) (sample, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.MetricsAddr+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return sample{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return sample{}, err
	}
	s := sample{v: map[string]float64{}}
	for _, l := range strings.Split(string(b), "\n") {
		for _, sr := range series {
			if v, ok := strings.CutPrefix(l, sr.name+" "); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					return sample{}, fmt.Errorf("%s: %w", l, err)
				}
				s.v[sr.name] = f
			}
		}
	}
	if len(s.v) != len(series)-1 {
		return sample{}, fmt.Errorf("metrics lack some of the soak series: %v", s.v)
	}
	return s, nil
}

// anonRSS is the anonymous resident memory of a process, from /proc.
func anonRSS(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "RssAnon:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no RssAnon for pid %d", pid)
}

func download(ctx context.Context, u, digest string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", resp.Status)
	}
	h := sha256.New()
	if _, err := io.Copy(h, resp.Body); err != nil {
		return err
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != digest {
		return fmt.Errorf("digest %s, want %s", got, digest)
	}
	return nil
}

// files is the tree of commit n of a repository: a few files, one changing.
func files(name string, n int) map[string]string {
	fs := map[string]string{"deploy/config.yaml": fmt.Sprintf("name: %s\ngeneration: %d\n", name, n)}
	for f := range 10 {
		fs[fmt.Sprintf("data/%02d.txt", f)] = strings.Repeat(fmt.Sprintf("%s-%d-", name, f), 2000)
	}
	return fs
}

func buildBinary(t *testing.T) string {
	if b := os.Getenv("SOURCERAFT_BIN"); b != "" {
		return b
	}
	b := filepath.Join(t.TempDir(), "source-controller")
	build := exec.Command("go", "build", "-o", b, "../../cmd/source-controller")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("build source-controller: %v", err)
	}
	return b
}
