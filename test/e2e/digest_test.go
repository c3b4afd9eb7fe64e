package e2e

import (
	"context"
	"errors"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sourceraft/sourceraft/internal/cluster"
	"github.com/sourceraft/sourceraft/internal/testenv"
	"github.com/sourceraft/sourceraft/storage"
)

// TestArtifactDigestAlgorithms runs one cluster through every value Flux
// accepts for --artifact-digest-algo, restarting every replica with the
// next one and pushing a new commit: the GitRepository's new artifact has
// a digest of that algorithm, and Flux's ArchiveFetcher downloads and
// verifies it from every replica (each a fresh process, so the first
// download verifies the blob file on the way), as does the one kept from
// the previous algorithm.
func TestArtifactDigestAlgorithms(t *testing.T) {
	env, kubeconfig, gs := startEnvAndGit(t)
	repo, err := gs.NewRepo("app", filepath.Join(t.TempDir(), "app"))
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := newCluster(t, cluster.Options{Replicas: 3})
	ns, err := env.NewNamespace(ctx, "digest")
	if err != nil {
		t.Fatal(err)
	}
	obj := &sourcev1.GitRepository{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app"},
		Spec: sourcev1.GitRepositorySpec{
			URL:       gs.URL + "/app.git",
			Interval:  metav1.Duration{Duration: time.Hour},
			Reference: &sourcev1.GitRepositoryRef{Branch: "master"},
		},
	}
	var prev *meta.Artifact
	for round, algo := range storage.DigestAlgorithms {
		// More than fsm.SmallBlobSize once compressed: the first download
		// streams through the hash instead of being read whole.
		sha, err := repo.Commit(algo.String(), map[string]string{"deploy/config.yaml": "algo: " + algo.String() + "\n", "data.txt": randomText(400 << 10)})
		if err != nil {
			t.Fatal(err)
		}
		for i := range c.Replicas {
			c.Stop(i)
		}
		c.SetArgs([]string{"--reconcile", "--kubeconfig=" + kubeconfig, "--artifact-digest-algo=" + algo.String()})
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.WaitLeader(ctx); err != nil {
			t.Fatal(err)
		}
		if round == 0 {
			if err := env.Client.Create(ctx, obj); err != nil {
				t.Fatal(err)
			}
		}
		art := waitArtifact(ctx, t, env, client.ObjectKeyFromObject(obj), "master@sha1:"+sha)
		if !strings.HasPrefix(art.Digest, algo.String()+":") {
			t.Fatalf("--artifact-digest-algo=%s: status.artifact.digest %s", algo, art.Digest)
		}
		// Retention keeps two artifacts per source: this round's and the
		// previous one, committed in the previous algorithm.
		served := map[string]string{artifactPath(t, art.URL): art.Digest}
		if prev != nil {
			served[artifactPath(t, prev.URL)] = prev.Digest
		}
		prev = art
		for i := range c.Replicas {
			for p, d := range served {
				fluxFetch(ctx, t, c, i, p, d)
			}
			// The first downloads checked the blob files against their
			// sha256 address, and found none corrupt.
			st, err := c.Status(ctx, i)
			if err != nil {
				t.Fatal(err)
			}
			if st.Integrity.Verified == 0 || st.Integrity.Corrupt != 0 {
				t.Fatalf("--artifact-digest-algo=%s: %s: integrity %+v after serving every artifact once", algo, c.Replicas[i].ID, st.Integrity)
			}
			// The ETag is the digest the status names, as consumers see it.
			if etag := headETag(ctx, t, c.ArtifactURL(i, artifactPath(t, art.URL))); etag != `"`+art.Digest+`"` {
				t.Fatalf("%s: ETag %s, status digest %s", c.Replicas[i].ID, etag, art.Digest)
			}
		}
	}
}

// waitArtifact waits for the GitRepository to be Ready at revision and
// returns its artifact.
func waitArtifact(ctx context.Context, t *testing.T, env *testenv.Env, key client.ObjectKey, revision string) *meta.Artifact {
	t.Helper()
	for {
		var o sourcev1.GitRepository
		if err := env.Client.Get(ctx, key, &o); err != nil {
			t.Fatal(err)
		}
		ready := apimeta.FindStatusCondition(o.Status.Conditions, meta.ReadyCondition)
		if ready != nil && ready.Status == metav1.ConditionTrue && o.Status.Artifact != nil && o.Status.Artifact.Revision == revision {
			return o.Status.Artifact
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s not Ready at %s: conditions %+v", key, revision, o.Status.Conditions)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func headETag(ctx context.Context, t *testing.T, url string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.Header.Get("ETag")
}

func TestBinaryRefusesUnknownDigestAlgorithm(t *testing.T) {
	out, err := exec.Command(binary, "--artifact-digest-algo=md5", "--node-id=a", "--raft-insecure", "--raft-addr=127.0.0.1:0",
		"--storage-path="+t.TempDir(), "--storage-addr=127.0.0.1:0", "--api-addr=127.0.0.1:0",
		"--health-addr=127.0.0.1:0", "--metrics-addr=127.0.0.1:0").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("started with --artifact-digest-algo=md5: %v\n%s", err, out)
	}
	for _, want := range []string{"--artifact-digest-algo", "md5", "sha1, sha256, sha384, sha512, blake3"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("refusal lacks %q:\n%s", want, out)
		}
	}
}
