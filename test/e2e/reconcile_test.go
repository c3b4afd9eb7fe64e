package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/http/fetch"
	"github.com/fluxcd/pkg/tar"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sourceraft/sourceraft/internal/cluster"
	"github.com/sourceraft/sourceraft/internal/gitserver"
	"github.com/sourceraft/sourceraft/internal/testenv"
)

// TestLeaderChangeMidReconcile kills the leader while it reconciles a batch
// of GitRepositories (some Ready, some not): the new leader finishes them,
// every artifact a status ever names is already served by the surviving
// replicas, each source ends with exactly one artifact, and once the old
// leader is back every replica serves them all to Flux's fetcher.
func TestLeaderChangeMidReconcile(t *testing.T) {
	env, kubeconfig, gs := startEnvAndGit(t)

	const sources = 8
	revisions := map[string]string{}
	for i := 0; i < sources; i++ {
		name := fmt.Sprintf("app%d", i)
		repo, err := gs.NewRepo(name, filepath.Join(t.TempDir(), name))
		if err != nil {
			t.Fatal(err)
		}
		files := map[string]string{"deploy/config.yaml": "name: " + name + "\n"}
		for f := 0; f < 20; f++ {
			files[fmt.Sprintf("data/%02d.txt", f)] = randomText(16 << 10)
		}
		sha, err := repo.Commit("initial", files)
		if err != nil {
			t.Fatal(err)
		}
		revisions[name] = "master@sha1:" + sha
	}

	c, leader := startCluster(t, 3, []string{"--reconcile", "--kubeconfig=" + kubeconfig}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ns, err := env.NewNamespace(ctx, "failover")
	if err != nil {
		t.Fatal(err)
	}
	for name := range revisions {
		obj := &sourcev1.GitRepository{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: sourcev1.GitRepositorySpec{
				URL:       gs.URL + "/" + name + ".git",
				Interval:  metav1.Duration{Duration: time.Hour},
				Reference: &sourcev1.GitRepositoryRef{Branch: "master"},
			},
		}
		if err := env.Client.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}

	// Every artifact a status names must already be served by a live
	// replica: checked continuously from before the kill to the end.
	var (
		mu       sync.Mutex
		named    = map[string]string{} // artifact path → digest
		problems []string
	)
	stopWatch := make(chan struct{})
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for {
			select {
			case <-stopWatch:
				return
			case <-time.After(200 * time.Millisecond):
			}
			var list sourcev1.GitRepositoryList
			if err := env.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
				continue
			}
			for _, o := range list.Items {
				if o.Status.Artifact == nil {
					continue
				}
				p := artifactPath(t, o.Status.Artifact.URL)
				if code, d, err := getFromLive(ctx, c, p); err != nil || code != http.StatusOK || d != o.Status.Artifact.Digest {
					mu.Lock()
					problems = append(problems, fmt.Sprintf("%s names %s: code %d digest %s err %v", o.Name, p, code, d, err))
					mu.Unlock()
				}
				mu.Lock()
				named[p] = o.Status.Artifact.Digest
				mu.Unlock()
			}
		}
	}()

	// Kill the leader while it reconciles: once a first source is Ready,
	// and, as checked right after, while some are not.
	readyAt := func() (int, error) {
		var list sourcev1.GitRepositoryList
		if err := env.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
			return 0, err
		}
		n := 0
		for _, o := range list.Items {
			ready := apimeta.FindStatusCondition(o.Status.Conditions, meta.ReadyCondition)
			if ready != nil && ready.Status == metav1.ConditionTrue && o.Status.Artifact != nil && o.Status.Artifact.Revision == revisions[o.Name] {
				n++
			}
		}
		return n, nil
	}
	for n := 0; n == 0; time.Sleep(20 * time.Millisecond) {
		if n, err = readyAt(); err != nil {
			t.Fatal(err)
		}
	}
	c.Kill(leader)
	killed := time.Now()
	done, err := readyAt()
	if err != nil {
		t.Fatal(err)
	}
	if done == sources {
		t.Fatalf("every source was reconciled before the leader was killed: nothing was left mid-reconcile")
	}
	t.Logf("%d of %d sources reconciled when the leader was killed", done, sources)
	newLeader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("killed %s; %s leads after %v", c.Replicas[leader].ID, c.Replicas[newLeader].ID, time.Since(killed))

	deadline := time.Now().Add(2 * time.Minute)
	for name, rev := range revisions {
		for {
			var o sourcev1.GitRepository
			if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &o); err != nil {
				t.Fatal(err)
			}
			ready := apimeta.FindStatusCondition(o.Status.Conditions, meta.ReadyCondition)
			if ready != nil && ready.Status == metav1.ConditionTrue && o.Status.Artifact != nil && o.Status.Artifact.Revision == rev {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not Ready at %s: conditions %+v", name, rev, o.Status.Conditions)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	t.Logf("all %d sources Ready %v after the kill", sources, time.Since(killed))
	close(stopWatch)
	<-watchDone
	if len(problems) > 0 {
		t.Fatalf("statuses named artifacts not served: %v", problems)
	}

	st, err := c.Status(ctx, newLeader)
	if err != nil {
		t.Fatal(err)
	}
	if st.Artifacts != sources {
		t.Fatalf("store holds %d artifacts for %d sources at one revision each", st.Artifacts, sources)
	}
	// The killed replica comes back on its data and catches up.
	if err := c.StartReplica(leader); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitApplied(ctx, leader, st.CommitIndex); err != nil {
		t.Fatal(err)
	}
	// Every replica serves every artifact to Flux's fetcher.
	for i := range c.Replicas {
		for p, d := range named {
			fluxFetch(ctx, t, c, i, p, d)
		}
	}
}

// fluxFetch is what kustomize-controller does with a status: Flux's
// ArchiveFetcher downloads path from replica i, verifies it against
// digest (in whichever algorithm it names) and extracts it, which must
// give deploy/config.yaml.
func fluxFetch(ctx context.Context, t *testing.T, c *cluster.Cluster, i int, path, digest string) {
	t.Helper()
	fetcher := fetch.New(fetch.WithRetries(1), fetch.WithMaxDownloadSize(50<<20), fetch.WithUntar(tar.WithMaxUntarSize(50<<20)))
	dir := t.TempDir()
	if err := fetcher.FetchWithContext(ctx, c.ArtifactURL(i, path), digest, dir); err != nil {
		t.Fatalf("%s: ArchiveFetcher.Fetch(%s, %s): %v", c.Replicas[i].ID, path, digest, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "deploy", "config.yaml")); err != nil {
		t.Fatalf("%s: %s extracted without deploy/config.yaml: %v", c.Replicas[i].ID, path, err)
	}
}

// artifactPath is the store path a status URL names, whatever host it has:
// the URL carries --storage-adv-addr, which in a cluster is the Service.
func artifactPath(t *testing.T, raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		t.Errorf("artifact URL %q: %v", raw, err)
		return ""
	}
	return u.Path[1:]
}

// getFromLive downloads path from the first running replica that answers,
// as a Service in front of the replicas would.
func getFromLive(ctx context.Context, c *cluster.Cluster, path string) (int, string, error) {
	var lastErr error
	for i := range c.Replicas {
		if !c.Running(i) {
			continue
		}
		code, d, err := get(ctx, c.ArtifactURL(i, path))
		if err == nil {
			return code, d, nil
		}
		lastErr = err
	}
	return 0, "", lastErr
}

// startEnvAndGit starts envtest, writes its kubeconfig for the replicas
// and starts a Git server, all stopped when the test ends.
func startEnvAndGit(t *testing.T) (*testenv.Env, string, *gitserver.Server) {
	t.Helper()
	env, err := testenv.StartEnv()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Stop() })
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := env.WriteKubeconfig(kubeconfig); err != nil {
		t.Fatal(err)
	}
	gs, err := gitserver.Start(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gs.Close() })
	return env, kubeconfig, gs
}

func randomText(n int) string {
	b := make([]byte, n/2)
	rand.Read(b)
	return hex.EncodeToString(b)
}
