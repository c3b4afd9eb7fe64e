package e2e

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"github.com/opencontainers/go-digest"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sourceraft/sourceraft/internal/cluster"
	"github.com/sourceraft/sourceraft/internal/helmserver"
	"github.com/sourceraft/sourceraft/internal/minioserver"
	"github.com/sourceraft/sourceraft/internal/testenv"
	"github.com/sourceraft/sourceraft/storage"
)

// TestArtifactDigestAlgorithms runs one cluster through every value Flux
// accepts for --artifact-digest-algo, restarting every replica with the
// next one and pushing a new commit: the GitRepository's new artifact has
// a digest of that algorithm, and Flux's ArchiveFetcher downloads and
// verifies it from every replica (each a fresh process, so the first
// download verifies the blob file on the way), as does the one kept from
// the previous algorithm. A HelmRepository and a Bucket take their
// revisions in the algorithm too, as Flux's do, and store new artifacts
// under them.
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
	helm := helmserver.Start(t, false)
	helm.Publish(helmserver.ChartSpec{Name: "app", Version: "1.0.0"})
	m := minioserver.Shared(t)
	bucketName := m.NewBucket(t, map[string]string{"deploy/config.yaml": "from: bucket\n"})
	keys := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bucket-keys"},
		StringData: map[string]string{"accesskey": minioserver.User, "secretkey": minioserver.Password},
	}
	helmRepo := &sourcev1.HelmRepository{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "charts"},
		Spec:       sourcev1.HelmRepositorySpec{URL: helm.URL(), Interval: metav1.Duration{Duration: time.Hour}},
	}
	bucket := &sourcev1.Bucket{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "objects"},
		Spec: sourcev1.BucketSpec{
			Provider: sourcev1.BucketProviderGeneric, BucketName: bucketName, Endpoint: m.Endpoint, Insecure: true,
			SecretRef: &meta.LocalObjectReference{Name: keys.Name}, Interval: metav1.Duration{Duration: time.Hour},
		},
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
			for _, o := range []client.Object{obj, keys, helmRepo, bucket} {
				if err := env.Client.Create(ctx, o); err != nil {
					t.Fatal(err)
				}
			}
		}
		art := waitArtifact(ctx, t, env, &sourcev1.GitRepository{ObjectMeta: obj.ObjectMeta}, "master@sha1:"+sha)
		if !strings.HasPrefix(art.Digest, algo.String()+":") {
			t.Fatalf("--artifact-digest-algo=%s: status.artifact.digest %s", algo, art.Digest)
		}
		// Revisions of the index and the listing in this algorithm: a new
		// artifact each, though neither source changed.
		indexRev := algo.FromBytes(helm.IndexBytes())
		index := waitArtifact(ctx, t, env, &sourcev1.HelmRepository{ObjectMeta: helmRepo.ObjectMeta}, indexRev.String())
		if !strings.HasPrefix(index.Digest, algo.String()+":") || !strings.HasSuffix(index.URL, "/index-"+indexRev.Encoded()+".yaml") {
			t.Fatalf("--artifact-digest-algo=%s: HelmRepository artifact %s, digest %s", algo, index.URL, index.Digest)
		}
		listing := waitArtifactWith(ctx, t, env, &sourcev1.Bucket{ObjectMeta: bucket.ObjectMeta}, func(a *meta.Artifact) bool {
			return digest.Digest(a.Revision).Algorithm() == algo && digest.Digest(a.Revision).Validate() == nil
		})
		if !strings.HasPrefix(listing.Digest, algo.String()+":") || !strings.HasSuffix(listing.URL, "/"+digest.Digest(listing.Revision).Encoded()+".tar.gz") {
			t.Fatalf("--artifact-digest-algo=%s: Bucket artifact %s, digest %s", algo, listing.URL, listing.Digest)
		}
		// Retention keeps two artifacts per source: this round's and the
		// previous one, committed in the previous algorithm.
		served := map[string]string{artifactPath(t, art.URL): art.Digest}
		if prev != nil {
			served[artifactPath(t, prev.URL)] = prev.Digest
		}
		prev = art
		served[artifactPath(t, listing.URL)] = listing.Digest
		for i := range c.Replicas {
			for p, d := range served {
				fluxFetch(ctx, t, c, i, p, d)
			}
			// The stored index is Flux's form of it (JSON), not the bytes served.
			if got := getVerified(ctx, t, c.ArtifactURL(i, artifactPath(t, index.URL)), index.Digest); !strings.Contains(string(got), `"app"`) {
				t.Fatalf("%s: HelmRepository artifact without the published chart: %.200s", c.Replicas[i].ID, got)
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

// artifactSource is what every source kind's status offers.
type artifactSource interface {
	client.Object
	GetArtifact() *meta.Artifact
	GetConditions() []metav1.Condition
}

// waitArtifact waits for obj to be Ready at revision and returns its
// artifact.
func waitArtifact(ctx context.Context, t *testing.T, env *testenv.Env, obj artifactSource, revision string) *meta.Artifact {
	t.Helper()
	return waitArtifactWith(ctx, t, env, obj, func(a *meta.Artifact) bool { return a.Revision == revision })
}

// waitArtifactWith waits for obj to be Ready with an artifact ok accepts.
func waitArtifactWith(ctx context.Context, t *testing.T, env *testenv.Env, obj artifactSource, ok func(*meta.Artifact) bool) *meta.Artifact {
	t.Helper()
	key := client.ObjectKeyFromObject(obj)
	for {
		if err := env.Client.Get(ctx, key, obj); err != nil {
			t.Fatal(err)
		}
		ready := apimeta.FindStatusCondition(obj.GetConditions(), meta.ReadyCondition)
		if ready != nil && ready.Status == metav1.ConditionTrue && obj.GetArtifact() != nil && ok(obj.GetArtifact()) {
			return obj.GetArtifact()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%T %s not Ready with the artifact wanted: artifact %+v, conditions %+v", obj, key, obj.GetArtifact(), obj.GetConditions())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// getVerified downloads url and checks the bytes against want, an
// <algo>:<hex> digest.
func getVerified(ctx context.Context, t *testing.T, url, want string) []byte {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d, %v", url, resp.StatusCode, err)
	}
	v := digest.Digest(want).Verifier()
	if _, err := v.Write(body); err != nil || !v.Verified() {
		t.Fatalf("GET %s: %d bytes that are not %s", url, len(body), want)
	}
	return body
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
