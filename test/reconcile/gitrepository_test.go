package reconcile

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sourceraft/sourceraft/metrics"
	"github.com/sourceraft/sourceraft/reconcilers"
)

// untar returns the regular files of a tar.gz artifact, path → content.
func untar(t *testing.T, data []byte) map[string]string {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	files := map[string]string{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag != tar.TypeReg && hdr.Typeflag != tar.TypeDir {
			t.Errorf("artifact holds %s of type %c", hdr.Name, hdr.Typeflag)
		}
		if hdr.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[hdr.Name] = string(b)
		}
	}
}

func fileNames(files map[string]string) []string {
	var n []string
	for k := range files {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// checkArtifact checks the status artifact against Flux's layout and the
// store, downloads it through its URL and returns its files.
func checkArtifact(t *testing.T, o *sourcev1.GitRepository, sha string) map[string]string {
	t.Helper()
	a := o.Status.Artifact
	wantPath := "gitrepository/" + o.Namespace + "/" + o.Name + "/" + sha + ".tar.gz"
	if a.Path != wantPath {
		t.Errorf("artifact path %q, want %q", a.Path, wantPath)
	}
	if a.URL != "http://"+advAddr+"/"+wantPath {
		t.Errorf("artifact URL %q, want http://%s/%s", a.URL, advAddr, wantPath)
	}
	if !strings.HasPrefix(a.Digest, "sha256:") || len(a.Digest) != len("sha256:")+64 {
		t.Errorf("artifact digest %q is not sha256:<hex>", a.Digest)
	}
	if a.LastUpdateTime.IsZero() {
		t.Error("artifact has no lastUpdateTime")
	}
	if !conditions.IsTrue(o, sourcev1.ArtifactInStorageCondition) {
		t.Errorf("ArtifactInStorage is not True: %v", o.Status.Conditions)
	}
	return untar(t, download(t, a))
}

func TestGitRepositoryRefs(t *testing.T) {
	ns := newNamespace(t)
	repo := gitSrv.newRepo(t, "public", "refs")
	first := repo.commit("first commit", map[string]string{"app/config.yaml": "v: 1"})
	repo.git("tag", "v1.0.0")
	second := repo.commit("second commit\n\nwith a body", map[string]string{"app/config.yaml": "v: 2"})
	repo.git("tag", "-a", "v1.1.0", "-m", "annotated release")
	repo.git("tag", "v2.0.0-rc.1")
	repo.git("checkout", "-q", "-b", "feature")
	feature := repo.commit("feature work", map[string]string{"app/config.yaml": "v: feature"})
	repo.git("checkout", "-q", "master")
	repo.push()

	tests := []struct {
		name     string
		ref      *sourcev1.GitRepositoryRef
		revision string
		sha      string
		content  string
	}{
		{"default branch", nil, "master@sha1:" + second, second, "v: 2"},
		{"branch", &sourcev1.GitRepositoryRef{Branch: "feature"}, "feature@sha1:" + feature, feature, "v: feature"},
		{"lightweight tag", &sourcev1.GitRepositoryRef{Tag: "v1.0.0"}, "v1.0.0@sha1:" + first, first, "v: 1"},
		{"annotated tag", &sourcev1.GitRepositoryRef{Tag: "v1.1.0"}, "v1.1.0@sha1:" + second, second, "v: 2"},
		{"semver", &sourcev1.GitRepositoryRef{SemVer: ">=1.0.0 <2.0.0"}, "v1.1.0@sha1:" + second, second, "v: 2"},
		{"name", &sourcev1.GitRepositoryRef{Name: "refs/heads/feature"}, "refs/heads/feature@sha1:" + feature, feature, "v: feature"},
		{"commit", &sourcev1.GitRepositoryRef{Commit: first}, "sha1:" + first, first, "v: 1"},
		{"commit on branch", &sourcev1.GitRepositoryRef{Branch: "master", Commit: first}, "master@sha1:" + first, first, "v: 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := strings.ReplaceAll(tt.name, " ", "-")
			newGitRepository(t, ns, name, repo.URL, func(o *sourcev1.GitRepository) { o.Spec.Reference = tt.ref })
			o := readyAt(t, ns, name, tt.revision)
			files := checkArtifact(t, o, tt.sha)
			if files["app/config.yaml"] != tt.content {
				t.Errorf("app/config.yaml = %q, want %q", files["app/config.yaml"], tt.content)
			}
			if conditions.GetMessage(o, meta.ReadyCondition) != "stored artifact for revision '"+tt.revision+"'" {
				t.Errorf("Ready message %q", conditions.GetMessage(o, meta.ReadyCondition))
			}
			if conditions.Has(o, meta.ReconcilingCondition) || conditions.Has(o, meta.StalledCondition) {
				t.Errorf("Reconciling or Stalled left on a Ready object: %v", o.Status.Conditions)
			}
		})
	}

	t.Run("new artifact event forwarded with revision and digest", func(t *testing.T) {
		o := getGitRepository(t, ns, "branch")
		evs := eventSink.await(t, ns, "branch", "NewArtifact", 10*time.Second)
		ev := evs[len(evs)-1]
		if ev.Metadata["source.toolkit.fluxcd.io/revision"] != o.Status.Artifact.Revision ||
			ev.Metadata["source.toolkit.fluxcd.io/digest"] != o.Status.Artifact.Digest {
			t.Errorf("event metadata %v, want revision %s and digest %s", ev.Metadata, o.Status.Artifact.Revision, o.Status.Artifact.Digest)
		}
		if ev.Message != "stored artifact for commit 'feature work'" || ev.ReportingController != "source-controller" {
			t.Errorf("event %q from %q", ev.Message, ev.ReportingController)
		}
		kev := &corev1.EventList{}
		if err := env.Client.List(context.Background(), kev); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, e := range kev.Items {
			if e.InvolvedObject.Name == "branch" && e.InvolvedObject.Namespace == ns && e.Reason == "NewArtifact" {
				found = true
			}
		}
		if !found {
			t.Error("no NewArtifact Kubernetes event")
		}
	})

	t.Run("reconcile duration metric", func(t *testing.T) {
		n := 0
		mfs, err := metrics.Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "gotk_reconcile_duration_seconds" {
				continue
			}
			for _, m := range mf.GetMetric() {
				labels := map[string]string{}
				for _, l := range m.GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				if labels["kind"] == "GitRepository" && labels["namespace"] == ns && m.GetHistogram().GetSampleCount() > 0 {
					n++
				}
			}
		}
		if n < len(tests) {
			t.Errorf("gotk_reconcile_duration_seconds has samples for %d objects of %s, want %d", n, ns, len(tests))
		}
	})
}

func TestGitRepositoryInvalidRefs(t *testing.T) {
	ns := newNamespace(t)
	repo := gitSrv.newRepo(t, "public", "invalid-refs")
	repo.commit("only commit", map[string]string{"a.txt": "a"})
	tests := []struct {
		name    string
		ref     *sourcev1.GitRepositoryRef
		stalled bool
		message string
	}{
		{"missing branch", &sourcev1.GitRepositoryRef{Branch: "nope"}, false, "refs/heads/nope"},
		{"missing tag", &sourcev1.GitRepositoryRef{Tag: "v9.9.9"}, false, "refs/tags/v9.9.9"},
		{"no matching semver", &sourcev1.GitRepositoryRef{SemVer: ">=5.0.0"}, false, "no tag matches semver range '>=5.0.0'"},
		{"invalid semver", &sourcev1.GitRepositoryRef{SemVer: "not a range"}, true, "semver range 'not a range'"},
		{"short commit", &sourcev1.GitRepositoryRef{Commit: "abc123"}, true, "not a full 40-character SHA-1"},
		{"unknown commit", &sourcev1.GitRepositoryRef{Commit: strings.Repeat("ab", 20)}, false, "not found in any branch"},
		{"invalid name", &sourcev1.GitRepositoryRef{Name: "main"}, true, "not a valid reference name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := strings.ReplaceAll(tt.name, " ", "-")
			newGitRepository(t, ns, name, repo.URL, func(o *sourcev1.GitRepository) { o.Spec.Reference = tt.ref })
			o := failedWith(t, ns, name, sourcev1.FetchFailedCondition, sourcev1.GitOperationFailedReason)
			if msg := conditionMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(msg, tt.message) {
				t.Errorf("FetchFailed message %q does not mention %q", msg, tt.message)
			}
			if conditions.IsTrue(o, meta.StalledCondition) != tt.stalled {
				t.Errorf("Stalled = %v, want %v: %v", conditions.IsTrue(o, meta.StalledCondition), tt.stalled, o.Status.Conditions)
			}
			if !conditions.IsFalse(o, meta.ReadyCondition) || o.Status.Artifact != nil {
				t.Errorf("want Ready=False and no artifact: %v", o.Status.Conditions)
			}
		})
	}
}

func TestGitRepositoryInvalidURL(t *testing.T) {
	ns := newNamespace(t)
	tests := []struct {
		name    string
		url     string
		stalled bool
		reason  string
		message string
	}{
		{"ssh without secret", "ssh://git@127.0.0.1:1/repo.git", false, sourcev1.AuthenticationFailedReason, "'identity' is required"},
		{"unparsable", "http://[::1/repo.git", true, sourcev1.URLInvalidReason, "failed to parse url"},
		{"no host", "https:///repo.git", true, sourcev1.URLInvalidReason, "has no host"},
		{"nothing listening", "http://127.0.0.1:1/repo.git", false, sourcev1.GitOperationFailedReason, "connection refused"},
		{"no such repository", gitSrv.srv.URL + "/public/missing.git", false, sourcev1.GitOperationFailedReason, "repository not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := strings.ReplaceAll(tt.name, " ", "-")
			newGitRepository(t, ns, name, tt.url, nil)
			o := failedWith(t, ns, name, sourcev1.FetchFailedCondition, tt.reason)
			if msg := conditionMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(msg, tt.message) {
				t.Errorf("FetchFailed message %q does not mention %q", msg, tt.message)
			}
			// Retried failures as Flux reports them (Reconciling with
			// ProgressingWithRetry), stalls without Reconciling and with
			// observedGeneration (which may trail the conditions: they are
			// patched in two requests).
			o = waitFailedAsFlux[*sourcev1.GitRepository](t, ns, name, sourcev1.FetchFailedCondition, tt.reason, tt.stalled)
			if conditions.GetMessage(o, meta.ReadyCondition) != conditionMessage(o, sourcev1.FetchFailedCondition) {
				t.Errorf("Ready message %q, want the FetchFailed message", conditions.GetMessage(o, meta.ReadyCondition))
			}
		})
	}
}

func TestGitRepositoryAuth(t *testing.T) {
	ns := newNamespace(t)
	repo := gitSrv.newRepo(t, "private", "auth")
	sha := repo.commit("private commit", map[string]string{"secret-app.yaml": "private"})
	secrets := map[string]map[string]string{
		"basic-good": {"username": gitUser, "password": gitPass},
		"basic-bad":  {"username": gitUser, "password": "wrong"},
		"bearer":     {"bearerToken": gitToken},
		"pass-only":  {"password": gitPass},
	}
	for name, data := range secrets {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, StringData: data}
		if err := env.Client.Create(context.Background(), s); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name    string
		secret  string
		ready   bool
		reason  string
		message string
	}{
		{"basic auth", "basic-good", true, "", ""},
		{"bearer token", "bearer", true, "", ""},
		{"wrong password", "basic-bad", false, sourcev1.GitOperationFailedReason, "authentication required"},
		{"no credentials", "", false, sourcev1.GitOperationFailedReason, "authentication required"},
		{"missing secret", "absent", false, sourcev1.AuthenticationFailedReason, "failed to get secret '" + ns + "/absent'"},
		{"password without username", "pass-only", false, sourcev1.AuthenticationFailedReason, "'password' requires 'username'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := strings.ReplaceAll(tt.name, " ", "-")
			newGitRepository(t, ns, name, repo.URL, func(o *sourcev1.GitRepository) {
				if tt.secret != "" {
					o.Spec.SecretRef = &meta.LocalObjectReference{Name: tt.secret}
				}
			})
			if tt.ready {
				o := readyAt(t, ns, name, "master@sha1:"+sha)
				if files := checkArtifact(t, o, sha); files["secret-app.yaml"] != "private" {
					t.Errorf("artifact files %v", fileNames(files))
				}
				return
			}
			o := failedWith(t, ns, name, sourcev1.FetchFailedCondition, tt.reason)
			if msg := conditionMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(msg, tt.message) {
				t.Errorf("FetchFailed message %q does not mention %q", msg, tt.message)
			}
			if !conditions.IsFalse(o, meta.ReadyCondition) || conditions.IsTrue(o, meta.StalledCondition) {
				t.Errorf("want Ready=False and not stalled (credentials may be fixed): %v", o.Status.Conditions)
			}
		})
	}

	t.Run("secret created later recovers", func(t *testing.T) {
		newGitRepository(t, ns, "late-secret", repo.URL, func(o *sourcev1.GitRepository) {
			o.Spec.SecretRef = &meta.LocalObjectReference{Name: "late"}
		})
		failedWith(t, ns, "late-secret", sourcev1.FetchFailedCondition, sourcev1.AuthenticationFailedReason)
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "late"}, StringData: secrets["basic-good"]}
		if err := env.Client.Create(context.Background(), s); err != nil {
			t.Fatal(err)
		}
		// Retried with backoff, no trigger needed.
		o := readyAt(t, ns, "late-secret", "master@sha1:"+sha)
		if conditions.Has(o, sourcev1.FetchFailedCondition) {
			t.Errorf("FetchFailed left after recovery: %v", o.Status.Conditions)
		}
	})
}

func TestGitRepositoryIgnore(t *testing.T) {
	ns := newNamespace(t)
	repo := gitSrv.newRepo(t, "public", "ignore")
	sha := repo.commit("ignore rules", map[string]string{
		".sourceignore":          "*.secret\n",
		"deploy/app.yaml":        "app",
		"deploy/db.secret":       "hidden",
		"deploy/.sourceignore":   "local-only.yaml\n",
		"deploy/local-only.yaml": "hidden",
		"docs/readme.md":         "docs",
		"logo.png":               "png",
		".github/workflows/ci":   "ci",
	})
	ignore := "docs/\n"
	newGitRepository(t, ns, "ignore", repo.URL, func(o *sourcev1.GitRepository) { o.Spec.Ignore = &ignore })
	o := readyAt(t, ns, "ignore", "master@sha1:"+sha)
	got := fileNames(checkArtifact(t, o, sha))
	want := []string{".sourceignore", "deploy/.sourceignore", "deploy/app.yaml"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("artifact files %q, want %q", got, want)
	}
	if o.Status.ObservedIgnore == nil || *o.Status.ObservedIgnore != ignore {
		t.Errorf("observedIgnore %v", o.Status.ObservedIgnore)
	}
	digest := o.Status.Artifact.Digest

	// A new spec.ignore re-archives the same revision.
	updateSpec(t, o, func(o *sourcev1.GitRepository) { o.Spec.Ignore = nil })
	o = waitFor(t, ns, "ignore", 60*time.Second, "a re-archived artifact", func(o *sourcev1.GitRepository) bool {
		return conditions.IsReady(o) && o.Status.ObservedGeneration == o.Generation && o.Status.Artifact.Digest != digest
	})
	got = fileNames(checkArtifact(t, o, sha))
	want = []string{".sourceignore", "deploy/.sourceignore", "deploy/app.yaml", "docs/readme.md"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("artifact files without spec.ignore %q, want %q", got, want)
	}
}

func TestGitRepositoryInclude(t *testing.T) {
	ns := newNamespace(t)
	lib := gitSrv.newRepo(t, "public", "include-lib")
	libSHA := lib.commit("lib", map[string]string{"manifests/crd.yaml": "crd", "manifests/sub/x.yaml": "x", "other.txt": "other"})
	app := gitSrv.newRepo(t, "public", "include-app")
	appSHA := app.commit("app", map[string]string{"app.yaml": "app", "vendor/lib/stale.yaml": "replaced by the include"})

	newGitRepository(t, ns, "lib", lib.URL, nil)
	newGitRepository(t, ns, "app", app.URL, func(o *sourcev1.GitRepository) {
		o.Spec.Include = []sourcev1.GitRepositoryInclude{
			{GitRepositoryRef: meta.LocalObjectReference{Name: "lib"}, FromPath: "manifests", ToPath: "vendor/lib"},
			{GitRepositoryRef: meta.LocalObjectReference{Name: "lib"}},
		}
	})
	libObj := readyAt(t, ns, "lib", "master@sha1:"+libSHA)
	o := readyAt(t, ns, "app", "master@sha1:"+appSHA)
	files := checkArtifact(t, o, appSHA)
	want := []string{"app.yaml", "lib/manifests/crd.yaml", "lib/manifests/sub/x.yaml", "lib/other.txt", "vendor/lib/crd.yaml", "vendor/lib/sub/x.yaml"}
	if got := fileNames(files); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("artifact files %q, want %q", got, want)
	}
	if len(o.Status.IncludedArtifacts) != 2 || o.Status.IncludedArtifacts[0].Digest != libObj.Status.Artifact.Digest {
		t.Errorf("includedArtifacts %+v, want lib's artifact twice", o.Status.IncludedArtifacts)
	}

	// A new artifact of the include rebuilds the includer (on its next reconcile).
	libSHA2 := lib.commit("lib v2", map[string]string{"manifests/crd.yaml": "crd v2"})
	requestReconcile(t, ns, "lib")
	readyAt(t, ns, "lib", "master@sha1:"+libSHA2)
	requestReconcile(t, ns, "app")
	o = waitFor(t, ns, "app", 60*time.Second, "rebuilt with the new include", func(o *sourcev1.GitRepository) bool {
		return conditions.IsReady(o) && len(o.Status.IncludedArtifacts) == 2 &&
			o.Status.IncludedArtifacts[0].Revision == "master@sha1:"+libSHA2
	})
	if files := checkArtifact(t, o, appSHA); files["vendor/lib/crd.yaml"] != "crd v2" {
		t.Errorf("vendor/lib/crd.yaml = %q after the include changed", files["vendor/lib/crd.yaml"])
	}

	t.Run("missing include waits", func(t *testing.T) {
		newGitRepository(t, ns, "waiting", app.URL, func(o *sourcev1.GitRepository) {
			o.Spec.Include = []sourcev1.GitRepositoryInclude{{GitRepositoryRef: meta.LocalObjectReference{Name: "not-yet"}}}
		})
		o := failedWith(t, ns, "waiting", sourcev1.IncludeUnavailableCondition, "NotFound")
		if !conditions.IsFalse(o, meta.ReadyCondition) || conditions.IsTrue(o, meta.StalledCondition) {
			t.Errorf("want Ready=False, not stalled: %v", o.Status.Conditions)
		}
		newGitRepository(t, ns, "not-yet", lib.URL, nil)
		// Retried after --requeue-dependency.
		o = readyAt(t, ns, "waiting", "master@sha1:"+appSHA)
		if conditions.Has(o, sourcev1.IncludeUnavailableCondition) {
			t.Errorf("IncludeUnavailable left: %v", o.Status.Conditions)
		}
	})

	t.Run("include path escaping the checkout", func(t *testing.T) {
		newGitRepository(t, ns, "escape", app.URL, func(o *sourcev1.GitRepository) {
			o.Spec.Include = []sourcev1.GitRepositoryInclude{{GitRepositoryRef: meta.LocalObjectReference{Name: "lib"}, ToPath: "../../outside"}}
		})
		o := failedWith(t, ns, "escape", sourcev1.IncludeUnavailableCondition, "CopyFailure")
		if msg := conditionMessage(o, sourcev1.IncludeUnavailableCondition); !strings.Contains(msg, "not a path inside the repository") {
			t.Errorf("message %q", msg)
		}
	})
}

func TestGitRepositorySuspendAndRequestedAt(t *testing.T) {
	ns := newNamespace(t)
	repo := gitSrv.newRepo(t, "public", "suspend")
	first := repo.commit("first", map[string]string{"a.txt": "1"})
	newGitRepository(t, ns, "repo", repo.URL, nil)
	readyAt(t, ns, "repo", "master@sha1:"+first)

	// requestedAt triggers a reconcile that picks up a new commit and is
	// acknowledged in lastHandledReconcileAt.
	second := repo.commit("second", map[string]string{"a.txt": "2"})
	at := requestReconcile(t, ns, "repo")
	readyAt(t, ns, "repo", "master@sha1:"+second)
	o := waitFor(t, ns, "repo", 10*time.Second, "lastHandledReconcileAt", func(o *sourcev1.GitRepository) bool {
		return o.Status.LastHandledReconcileAt == at
	})

	// Suspended: requests are acknowledged, nothing is fetched.
	updateSpec(t, o, func(o *sourcev1.GitRepository) { o.Spec.Suspend = true })
	repo.commit("third", map[string]string{"a.txt": "3"})
	at = requestReconcile(t, ns, "repo")
	waitFor(t, ns, "repo", 30*time.Second, "requestedAt handled while suspended", func(o *sourcev1.GitRepository) bool {
		return o.Status.LastHandledReconcileAt == at
	})
	time.Sleep(time.Second)
	if o := getGitRepository(t, ns, "repo"); o.Status.Artifact.Revision != "master@sha1:"+second {
		t.Fatalf("suspended object moved to %s", o.Status.Artifact.Revision)
	}

	// Resumed: the new commit is stored.
	o = getGitRepository(t, ns, "repo")
	updateSpec(t, o, func(o *sourcev1.GitRepository) { o.Spec.Suspend = false })
	third := repo.head()
	readyAt(t, ns, "repo", "master@sha1:"+third)

	// Superseded artifacts are collected down to the retention's 2 records.
	arts := storedAfterGC[*sourcev1.GitRepository](t, ns, "repo", 2)
	if len(arts) != 2 {
		t.Errorf("store holds %d artifacts for the object, want 2 (retention records)", len(arts))
	}
}

func TestGitRepositoryDeletion(t *testing.T) {
	ns := newNamespace(t)
	repo := gitSrv.newRepo(t, "public", "deletion")
	sha := repo.commit("to delete", map[string]string{"a.txt": "a"})
	newGitRepository(t, ns, "doomed", repo.URL, nil)
	o := readyAt(t, ns, "doomed", "master@sha1:"+sha)
	if len(o.Finalizers) != 1 || o.Finalizers[0] != sourcev1.SourceFinalizer {
		t.Fatalf("finalizers %v", o.Finalizers)
	}
	if len(storedArtifacts(t, ns, "doomed")) == 0 {
		t.Fatal("no artifact stored")
	}
	deleteAndWait(t, o)
	if arts := storedArtifacts(t, ns, "doomed"); len(arts) != 0 {
		t.Fatalf("store still holds %d artifacts of the deleted object", len(arts))
	}
}

func TestGitRepositorySymlinksNotArchived(t *testing.T) {
	ns := newNamespace(t)
	repo := gitSrv.newRepo(t, "public", "symlinks")
	secretDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(secretDir, "secret"), []byte("MUST-NOT-LEAK"), 0o644); err != nil {
		t.Fatal(err)
	}
	repo.commit("files", map[string]string{"ok.yaml": "ok"})
	for link, target := range map[string]string{
		"abs-file": filepath.Join(secretDir, "secret"),
		"abs-dir":  secretDir,
		"up":       "../../../../../../../..",
		"inside":   "ok.yaml",
	} {
		if err := os.Symlink(target, filepath.Join(repo.work, link)); err != nil {
			t.Fatal(err)
		}
	}
	sha := repo.commit("symlinks", nil)
	newGitRepository(t, ns, "symlinks", repo.URL, nil)
	o := readyAt(t, ns, "symlinks", "master@sha1:"+sha)
	data := download(t, o.Status.Artifact)
	if bytes.Contains(data, []byte("MUST-NOT-LEAK")) {
		t.Fatal("artifact holds the content of a symlink target outside the checkout")
	}
	if got := fileNames(untar(t, data)); strings.Join(got, ",") != "ok.yaml" {
		t.Fatalf("artifact files %q, want only ok.yaml", got)
	}
}

func TestGitRepositoryOversizedKeepsPreviousArtifact(t *testing.T) {
	ns := newNamespace(t)
	repo := gitSrv.newRepo(t, "public", "oversized")
	small := repo.commit("small", map[string]string{"a.txt": "small"})
	newGitRepository(t, ns, "big", repo.URL, nil)
	before := readyAt(t, ns, "big", "master@sha1:"+small)

	big := repo.commit("too big", map[string]string{"blob.txt": strings.Repeat("0123456789abcdef", archiveMaxSize/16+1)})
	requestReconcile(t, ns, "big")
	o := failedWith(t, ns, "big", sourcev1.BuildFailedCondition, reconcilers.ArchiveLimitReason)
	msg := conditionMessage(o, sourcev1.BuildFailedCondition)
	if !strings.Contains(msg, "master@sha1:"+big) || !strings.Contains(msg, "archive limit exceeded") {
		t.Errorf("BuildFailed message %q", msg)
	}
	if !conditions.IsFalse(o, meta.ReadyCondition) {
		t.Errorf("Ready is not False: %v", o.Status.Conditions)
	}
	// The previous artifact is still the status artifact, still served.
	if o.Status.Artifact == nil || o.Status.Artifact.Digest != before.Status.Artifact.Digest {
		t.Fatalf("status artifact changed to %+v", o.Status.Artifact)
	}
	if files := untar(t, download(t, o.Status.Artifact)); files["a.txt"] != "small" {
		t.Errorf("previous artifact content %v", fileNames(files))
	}
	for _, a := range storedArtifacts(t, ns, "big") {
		if strings.Contains(a.File, big) {
			t.Errorf("an artifact of the oversized revision was stored: %s", a.Path())
		}
	}

	// Shrinking the source again recovers.
	fixed := repo.commit("shrink", map[string]string{"blob.txt": ""})
	requestReconcile(t, ns, "big")
	o = readyAt(t, ns, "big", "master@sha1:"+fixed)
	if conditions.Has(o, sourcev1.BuildFailedCondition) {
		t.Errorf("BuildFailed left after recovery: %v", o.Status.Conditions)
	}
}

func TestLeadershipLossStopsStatusWrites(t *testing.T) {
	ns := newNamespace(t)
	repo := gitSrv.newRepo(t, "public", "leadership")
	sha := repo.commit("c", map[string]string{"a.txt": "a"})

	// As on losing Raft leadership: the manager stops, nothing is written.
	runner.OnLeadership(false)
	restored := false
	defer func() {
		if !restored {
			runner.OnLeadership(true)
		}
	}()
	if runner.Running() {
		t.Fatal("runner still running after losing leadership")
	}
	newGitRepository(t, ns, "follower", repo.URL, nil)
	time.Sleep(2 * time.Second)
	o := getGitRepository(t, ns, "follower")
	if len(o.Finalizers) != 0 || len(o.Status.Conditions) != 0 || o.Status.Artifact != nil {
		t.Fatalf("a replica that is not leader wrote the object: finalizers %v, status %+v", o.Finalizers, o.Status)
	}

	starts := runner.Starts()
	runner.OnLeadership(true)
	restored = true
	readyAt(t, ns, "follower", "master@sha1:"+sha)
	if runner.Starts() != starts+1 {
		t.Errorf("manager starts %d, want %d", runner.Starts(), starts+1)
	}
}

func TestGitRepositorySparseCheckout(t *testing.T) {
	ns := newNamespace(t)
	repo := gitSrv.newRepo(t, "public", "sparse")
	sha := repo.commit("tree", map[string]string{
		"README.md":            "root",
		"clusters/prod/a.yaml": "prod",
		"clusters/dev/a.yaml":  "dev",
		"apps/app.yaml":        "app",
	})
	newGitRepository(t, ns, "sparse", repo.URL, func(o *sourcev1.GitRepository) {
		o.Spec.SparseCheckout = []string{"./clusters/prod", "apps/"}
	})
	o := readyAt(t, ns, "sparse", "master@sha1:"+sha)
	got := fileNames(checkArtifact(t, o, sha))
	for _, f := range got {
		if strings.HasPrefix(f, "clusters/dev/") {
			t.Errorf("sparse checkout archived %s", f)
		}
	}
	for _, want := range []string{"clusters/prod/a.yaml", "apps/app.yaml"} {
		if !strings.Contains(strings.Join(got, ","), want) {
			t.Errorf("sparse checkout lost %s: %q", want, got)
		}
	}
	if len(o.Status.ObservedSparseCheckout) != 2 {
		t.Errorf("observedSparseCheckout %v", o.Status.ObservedSparseCheckout)
	}

	newGitRepository(t, ns, "sparse-missing", repo.URL, func(o *sourcev1.GitRepository) {
		o.Spec.SparseCheckout = []string{"nope"}
	})
	o = failedWith(t, ns, "sparse-missing", sourcev1.FetchFailedCondition, sourcev1.GitOperationFailedReason)
	if msg := conditionMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(msg, "sparse checkout directory 'nope' does not exist") {
		t.Errorf("FetchFailed message %q", msg)
	}
}

func TestGitRepositoryRecurseSubmodules(t *testing.T) {
	ns := newNamespace(t)
	sub := gitSrv.newRepo(t, "public", "submodule-lib")
	sub.commit("lib", map[string]string{"lib.yaml": "from the submodule"})
	super := gitSrv.newRepo(t, "public", "submodule-super")
	super.commit("super", map[string]string{"main.yaml": "main"})
	super.git("-c", "protocol.allow=always", "submodule", "add", "-q", sub.URL, "vendor/lib")
	sha := super.commit("add submodule", nil)

	newGitRepository(t, ns, "with", super.URL, func(o *sourcev1.GitRepository) { o.Spec.RecurseSubmodules = true })
	newGitRepository(t, ns, "without", super.URL, nil)
	o := readyAt(t, ns, "with", "master@sha1:"+sha)
	if files := checkArtifact(t, o, sha); files["vendor/lib/lib.yaml"] != "from the submodule" {
		t.Errorf("recurseSubmodules: files %q", fileNames(files))
	}
	if !o.Status.ObservedRecurseSubmodules {
		t.Error("observedRecurseSubmodules is false")
	}
	o = readyAt(t, ns, "without", "master@sha1:"+sha)
	if files := checkArtifact(t, o, sha); files["vendor/lib/lib.yaml"] != "" {
		t.Errorf("submodule content archived without recurseSubmodules: %q", fileNames(files))
	}
}

func TestGitRepositoryTimeout(t *testing.T) {
	ns := newNamespace(t)
	newGitRepository(t, ns, "slow", gitSrv.srv.URL+"/slow/repo.git", func(o *sourcev1.GitRepository) {
		o.Spec.Timeout = &metav1.Duration{Duration: time.Second}
	})
	start := time.Now()
	o := failedWith(t, ns, "slow", sourcev1.FetchFailedCondition, sourcev1.GitOperationFailedReason)
	if msg := conditionMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(msg, "context deadline exceeded") {
		t.Errorf("FetchFailed message %q does not say the timeout expired", msg)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("a 1s timeout took %v to fail", d)
	}
}

func TestGitRepositoryUnsupportedFieldsStall(t *testing.T) {
	ns := newNamespace(t)
	repo := gitSrv.newRepo(t, "public", "unsupported")
	repo.commit("c", map[string]string{"a": "a"})
	newGitRepository(t, ns, "verify", repo.URL, func(o *sourcev1.GitRepository) {
		o.Spec.Provider = sourcev1.GitProviderAWS
	})
	o := failedWith(t, ns, "verify", sourcev1.FetchFailedCondition, reconcilers.UnsupportedFieldReason)
	if msg := conditionMessage(o, sourcev1.FetchFailedCondition); msg != "not supported by sourceraft yet: spec.provider 'aws'" {
		t.Errorf("FetchFailed message %q", msg)
	}
	if !conditions.IsTrue(o, meta.StalledCondition) || o.Status.Artifact != nil {
		t.Errorf("want Stalled and no artifact: %v", o.Status.Conditions)
	}
}
