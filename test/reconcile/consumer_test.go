package reconcile

import (
	"os"
	"path/filepath"
	"testing"

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

	dir := t.TempDir()
	// fetch.New is what NewArchiveFetcher (deprecated in this release)
	// builds: the same ArchiveFetcher with the same checks.
	fetcher := fetch.New(fetch.WithRetries(1), fetch.WithMaxDownloadSize(10<<20), fetch.WithUntar(tar.WithMaxUntarSize(10<<20)))
	if err := fetcher.Fetch(o.Status.Artifact.URL, o.Status.Artifact.Digest, dir); err != nil {
		t.Fatalf("ArchiveFetcher.Fetch(%s, %s): %v", o.Status.Artifact.URL, o.Status.Artifact.Digest, err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "clusters/prod/app.yaml"))
	if err != nil || string(got) != "kind: ConfigMap\n" {
		t.Fatalf("extracted app.yaml: %q, %v", got, err)
	}

	// A wrong digest is refused: the fetcher really verifies.
	wrong := "sha256:" + "0000000000000000000000000000000000000000000000000000000000000000"
	if err := fetcher.Fetch(o.Status.Artifact.URL, wrong, t.TempDir()); err == nil {
		t.Fatal("ArchiveFetcher accepted an artifact under a wrong digest")
	}
}
