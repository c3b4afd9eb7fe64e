package reconcile

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/http/fetch"
	"github.com/fluxcd/pkg/tar"
)

// TestConsumerFetchesArtifact downloads a GitRepository artifact the way
// kustomize-controller does, with Flux's ArchiveFetcher: by its status
// URL, verifying its status digest, extracting it.
func TestConsumerFetchesArtifact(t *testing.T) {
	ns := newNamespace(t)
	repo := gitSrv.newRepo(t, "public", "consumer")
	sha := repo.commit("manifests", map[string]string{
		"clusters/prod/kustomization.yaml": "resources: [app.yaml]\n",
		"clusters/prod/app.yaml":           "kind: ConfigMap\n",
	})
	newGitRepository(t, ns, "consumed", repo.URL, nil)
	o := readyAt(t, ns, "consumed", "master@sha1:"+sha)

	dir := fetchFromEveryReplica(t, o.Status.Artifact)
	got, err := os.ReadFile(filepath.Join(dir, "clusters/prod/app.yaml"))
	if err != nil || string(got) != "kind: ConfigMap\n" {
		t.Fatalf("extracted app.yaml: %q, %v", got, err)
	}

	// A wrong digest is refused: the fetcher really verifies.
	wrong := "sha256:" + "0000000000000000000000000000000000000000000000000000000000000000"
	if err := newFetcher().Fetch(o.Status.Artifact.URL, wrong, t.TempDir()); err == nil {
		t.Fatal("ArchiveFetcher accepted an artifact under a wrong digest")
	}
}

// newFetcher is the ArchiveFetcher kustomize-controller and helm-controller
// use; fetch.New builds what the deprecated NewArchiveFetcher did.
func newFetcher() *fetch.ArchiveFetcher {
	return fetch.New(fetch.WithRetries(1), fetch.WithMaxDownloadSize(10<<20), fetch.WithUntar(tar.WithMaxUntarSize(10<<20)))
}

// fetchFromEveryReplica downloads, digest-verifies and extracts the
// artifact from every replica's artifact server, by its path and by its
// object's alias (so it must be the object's current artifact), as a consumer behind the
// Service may reach any of them, and returns the leader's extraction.
func fetchFromEveryReplica(t *testing.T, a *meta.Artifact) string {
	t.Helper()
	var first string
	for i, addr := range replicaAddrs {
		dir := t.TempDir()
		for _, p := range []string{a.Path, aliasPath(a)} {
			u := "http://" + addr + "/" + p
			if err := newFetcher().Fetch(u, a.Digest, dir); err != nil {
				t.Fatalf("replica %d: ArchiveFetcher.Fetch(%s, %s): %v", i, u, a.Digest, err)
			}
		}
		if i == 0 {
			first = dir
		}
	}
	return first
}
