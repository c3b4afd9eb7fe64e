package reconcile

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"testing"

	"github.com/fluxcd/pkg/apis/meta"
)

// TestAliasFollowsCurrentArtifact checks latest.tar.gz, which every replica
// serves for a GitRepository too (Flux writes no status.url there): the
// current artifact's bytes with its digest as ETag, 304 to a consumer
// polling with that ETag, the new bytes once a new revision is stored, and
// 404 once the object and its artifacts are gone, never an older artifact.
func TestAliasFollowsCurrentArtifact(t *testing.T) {
	ns := newNamespace(t)
	repo := gitSrv.newRepo(t, "public", "alias")
	first := repo.commit("first", map[string]string{"a.txt": "1"})
	newGitRepository(t, ns, "repo", repo.URL, nil)
	o := readyAt(t, ns, "repo", "master@sha1:"+first)
	old := o.Status.Artifact
	fetchFromEveryReplica(t, old)
	etag := checkAliasEverywhere(t, old)
	for _, addr := range replicaAddrs {
		if code := aliasStatus(t, "http://"+addr+"/"+aliasPath(old), etag); code != http.StatusNotModified {
			t.Fatalf("%s: If-None-Match with the current digest: %d, want 304", addr, code)
		}
	}

	second := repo.commit("second", map[string]string{"a.txt": "2"})
	requestReconcile(t, ns, "repo")
	o = readyAt(t, ns, "repo", "master@sha1:"+second)
	if o.Status.Artifact.Digest == old.Digest {
		t.Fatalf("the second revision has the first one's digest %s", old.Digest)
	}
	for _, addr := range replicaAddrs {
		if code := aliasStatus(t, "http://"+addr+"/"+aliasPath(old), etag); code != http.StatusOK {
			t.Fatalf("%s: If-None-Match with the old digest after a new revision: %d, want 200", addr, code)
		}
	}
	checkAliasEverywhere(t, o.Status.Artifact)

	deleteAndWait(t, o)
	for _, addr := range replicaAddrs {
		if code := aliasStatus(t, "http://"+addr+"/"+aliasPath(old), ""); code != http.StatusNotFound {
			t.Fatalf("%s: alias of a deleted object: %d, want 404", addr, code)
		}
	}
}

// checkAliasEverywhere downloads the alias of a from every replica, checks
// bytes and ETag against a's digest and returns the ETag.
func checkAliasEverywhere(t *testing.T, a *meta.Artifact) string {
	t.Helper()
	want := `"` + a.Digest + `"`
	for _, addr := range replicaAddrs {
		u := "http://" + addr + "/" + aliasPath(a)
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d, %v", u, resp.StatusCode, err)
		}
		sum := sha256.Sum256(body)
		if got := "sha256:" + hex.EncodeToString(sum[:]); got != a.Digest {
			t.Fatalf("GET %s: digest %s, the current artifact's is %s", u, got, a.Digest)
		}
		if got := resp.Header.Get("ETag"); got != want {
			t.Fatalf("GET %s: ETag %s, want %s", u, got, want)
		}
	}
	return want
}

// aliasStatus GETs url, with If-None-Match when etag is set, and returns the status code.
func aliasStatus(t *testing.T, url, etag string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}
