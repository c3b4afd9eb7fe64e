// Package fluxcli drives a sourceraft cluster with the real Flux CLI, as a
// Flux user would: three replicas of the real binary with --reconcile on
// loopback, the envtest kube-apiserver, a real Git server, and bin/flux
// (`make flux-cli`, v2.9.5 built from the Go module proxy) run with a
// kubeconfig and no --namespace, so every command looks in flux-system as
// it does against a Flux install.
package fluxcli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/http/fetch"
	"github.com/fluxcd/pkg/tar"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/sourceraft/sourceraft/api"
	"github.com/sourceraft/sourceraft/internal/cluster"
	"github.com/sourceraft/sourceraft/internal/gitserver"
	"github.com/sourceraft/sourceraft/internal/testenv"
)

const ns = "flux-system"

// fluxBinary is $FLUX_BIN or bin/flux under the repository root. A missing
// CLI fails the test with the target that builds it: a skipped suite would
// look like a passing one.
func fluxBinary(t *testing.T) string {
	t.Helper()
	p := os.Getenv("FLUX_BIN")
	if p == "" {
		root, err := testenv.RepoRoot()
		if err != nil {
			t.Fatal(err)
		}
		p = filepath.Join(root, "bin", "flux")
	}
	if fi, err := os.Stat(p); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		t.Fatalf("Flux CLI %s is missing or not executable: run `make flux-cli` (builds it from the Go module proxy into bin/flux)", p)
	}
	return p
}

// controllerBinary is $SOURCERAFT_BIN (`make test-fluxcli` sets it), or a
// fresh build of cmd/source-controller.
func controllerBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("SOURCERAFT_BIN"); p != "" {
		return p
	}
	p := filepath.Join(t.TempDir(), "source-controller")
	build := exec.Command("go", "build", "-o", p, "../../cmd/source-controller")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build source-controller: %v\n%s", err, out)
	}
	return p
}

// cli runs the Flux CLI against one cluster.
type cli struct {
	bin, kubeconfig, home string
}

// run returns the command's stdout and stderr (where Flux's logger writes
// its ► ✔ ✗ lines) and an error for a non-zero exit.
func (f cli) run(ctx context.Context, args ...string) (string, string, error) {
	args = append(args, "--kubeconfig="+f.kubeconfig, "--timeout=2m")
	cmd := exec.CommandContext(ctx, f.bin, args...)
	// A HOME of its own: the CLI keeps a discovery cache under ~/.kube.
	// flux check asks GitHub for the latest release: a proxy on a closed
	// loopback port keeps it here (loopback, the API server, is never proxied).
	cmd.Env = append(os.Environ(), "HOME="+f.home, "KUBECONFIG=",
		"HTTPS_PROXY=http://127.0.0.1:1", "HTTP_PROXY=http://127.0.0.1:1", "NO_PROXY=")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("flux %s: %w\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), stderr.String(), err
}

// must is run for a command that has to succeed.
func (f cli) must(ctx context.Context, t *testing.T, args ...string) (string, string) {
	t.Helper()
	out, errOut, err := f.run(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("flux %s\n%s%s", strings.Join(args, " "), errOut, out)
	return out, errOut
}

func contains(t *testing.T, what, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("%s: no %q in:\n%s", what, w, out)
		}
	}
}

// row finds the table line whose first column is first and returns its
// whitespace-separated columns.
func row(t *testing.T, table, first string) []string {
	t.Helper()
	for line := range strings.Lines(table) {
		if f := strings.Fields(line); len(f) > 0 && f[0] == first {
			return f
		}
	}
	t.Fatalf("no row %q in:\n%s", first, table)
	return nil
}

func TestFluxCLI(t *testing.T) {
	flux := cli{bin: fluxBinary(t), home: t.TempDir()}
	bin := controllerBinary(t)

	env, err := testenv.StartEnv()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	flux.kubeconfig = filepath.Join(t.TempDir(), "kubeconfig")
	if err := env.WriteKubeconfig(flux.kubeconfig); err != nil {
		t.Fatal(err)
	}
	gs, err := gitserver.Start(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = gs.Close() })
	repo, err := gs.NewRepo("app", filepath.Join(t.TempDir(), "app"))
	if err != nil {
		t.Fatal(err)
	}
	// Small enough that the artifact stays under 1 KiB, which `flux stats`
	// prints in plain bytes.
	sha1, err := repo.Commit("first", map[string]string{"deploy/app.yaml": "name: app\n"})
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	c, err := cluster.New(cluster.Options{Binary: bin, Dir: dir, Replicas: 3,
		Args: []string{"--reconcile", "--kubeconfig=" + flux.kubeconfig}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		for i := range c.Replicas {
			if t.Failed() {
				t.Logf("---- %s log (last 6 KiB) ----\n%s", c.Replicas[i].ID, c.LogTail(i, 6<<10))
			}
		}
	})
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}

	key := client.ObjectKey{Namespace: ns, Name: "app"}
	get := func(t *testing.T) *sourcev1.GitRepository {
		t.Helper()
		var o sourcev1.GitRepository
		if err := env.Client.Get(ctx, key, &o); err != nil {
			t.Fatal(err)
		}
		return &o
	}
	// served checks the artifact the status names is downloaded and
	// digest-verified by Flux's fetcher from every replica.
	served := func(t *testing.T, revision string) *meta.Artifact {
		t.Helper()
		art := get(t).Status.Artifact
		if art == nil || art.Revision != revision {
			t.Fatalf("status artifact %+v, want revision %s", art, revision)
		}
		u, err := url.Parse(art.URL)
		if err != nil {
			t.Fatal(err)
		}
		fetcher := fetch.New(fetch.WithRetries(1), fetch.WithMaxDownloadSize(1<<20), fetch.WithUntar(tar.WithMaxUntarSize(1<<20)))
		for i, r := range c.Replicas {
			if err := fetcher.Fetch(c.ArtifactURL(i, u.Path[1:]), art.Digest, t.TempDir()); err != nil {
				t.Errorf("%s: fetch %s: %v", r.ID, art.URL, err)
			}
		}
		return art
	}
	rev1 := "master@sha1:" + sha1

	ok := t.Run("create source git", func(t *testing.T) {
		_, log := flux.must(ctx, t, "create", "source", "git", "app", "--url="+repo.URL, "--branch=master", "--interval=1h")
		contains(t, "create", log, "GitRepository source created",
			"GitRepository source reconciliation completed", "fetched revision: "+rev1)
		o := get(t)
		if o.Spec.URL != repo.URL || o.Spec.Reference == nil || o.Spec.Reference.Branch != "master" || o.Spec.Interval.Duration != time.Hour {
			t.Errorf("created spec %+v", o.Spec)
		}
		served(t, rev1)
	})
	if !ok {
		return
	}

	t.Run("check and version", func(t *testing.T) {
		// Both list the Deployments labelled part-of=flux; sourceraft is a
		// StatefulSet (README, "The Flux CLI").
		if _, errOut, err := flux.run(ctx, "version"); err == nil || !strings.Contains(errOut, "no deployments found in flux-system namespace") {
			t.Errorf("flux version: err %v, stderr %q; want no deployments found", err, errOut)
		}
		_, errOut, err := flux.run(ctx, "check")
		if err == nil {
			t.Error("flux check passed without a Deployment")
		}
		contains(t, "check", errOut, "no controllers found in the 'flux-system' namespace with the label selector 'app.kubernetes.io/part-of=flux'")
		// The CRDs it does find, by Flux's labels.
		crds, err := api.CRDs()
		if err != nil {
			t.Fatal(err)
		}
		for _, crd := range crds {
			contains(t, "check", errOut, "✔ "+crd.Name+"/v1")
		}
	})

	t.Run("get sources all", func(t *testing.T) {
		out, _ := flux.must(ctx, t, "get", "sources", "all")
		header := row(t, out, "NAME")
		if !slices.Equal(header, []string{"NAME", "REVISION", "SUSPENDED", "READY", "MESSAGE"}) {
			t.Errorf("header %v", header)
		}
		// The CLI shortens hex strings to 8 characters.
		r := row(t, out, "gitrepository/app")
		if want := []string{"gitrepository/app", "master@sha1:" + sha1[:8], "False", "True"}; len(r) < 5 || !slices.Equal(r[:4], want) {
			t.Errorf("row %v, want %v and a message", r, want)
		}
		contains(t, "get sources all", out, "stored artifact for revision 'master@sha1:"+sha1[:8]+"'")
	})

	sha2, err := repo.Commit("second", map[string]string{"deploy/app.yaml": "name: app\nreplicas: 2\n"})
	if err != nil {
		t.Fatal(err)
	}
	rev2 := "master@sha1:" + sha2
	t.Run("reconcile source git after a commit", func(t *testing.T) {
		_, log := flux.must(ctx, t, "reconcile", "source", "git", "app")
		contains(t, "reconcile", log, "annotating GitRepository app in flux-system namespace",
			"GitRepository annotated", "fetched revision "+rev2)
		served(t, rev2)
	})

	var size int64
	t.Run("suspend and resume", func(t *testing.T) {
		_, log := flux.must(ctx, t, "suspend", "source", "git", "app")
		contains(t, "suspend", log, "suspending source git app in flux-system namespace", "source git suspended")
		if !get(t).Spec.Suspend {
			t.Fatal("spec.suspend is false after flux suspend")
		}
		out, _ := flux.must(ctx, t, "get", "sources", "git")
		if r := row(t, out, "app"); len(r) < 4 || r[2] != "True" {
			t.Errorf("flux get sources git shows %v, want SUSPENDED True", r)
		}
		if _, errOut, err := flux.run(ctx, "reconcile", "source", "git", "app"); err == nil || !strings.Contains(errOut, "resource is suspended") {
			t.Errorf("flux reconcile of a suspended source: err %v, stderr %q; want it refused as suspended", err, errOut)
		}
		out, _ = flux.must(ctx, t, "stats")
		art := get(t).Status.Artifact
		if art == nil || art.Size == nil || *art.Size >= 1024 {
			t.Fatalf("artifact %+v: the test needs one under 1 KiB", art)
		}
		size = *art.Size
		// Reconcilers, Running, Failing, Suspended, Storage.
		if r := row(t, out, "GitRepository"); !slices.Equal(r, []string{"GitRepository", "0", "0", "1", fmt.Sprint(size), "B"}) {
			t.Errorf("flux stats while suspended: %v, want GitRepository 0 0 1 %d B", r, size)
		}

		// A commit while suspended is fetched by resume, which asks for a
		// reconciliation and waits for it.
		sha3, err := repo.Commit("third", map[string]string{"deploy/app.yaml": "name: app\nreplicas: 3\n"})
		if err != nil {
			t.Fatal(err)
		}
		rev3 := "master@sha1:" + sha3
		_, log = flux.must(ctx, t, "resume", "source", "git", "app")
		contains(t, "resume", log, "resuming source git app in flux-system namespace", "source git resumed",
			"GitRepository app reconciliation completed", "fetched revision "+rev3)
		if get(t).Spec.Suspend {
			t.Error("spec.suspend is still true after flux resume")
		}
		if a := served(t, rev3); a.Size != nil {
			size = *a.Size
		}
	})

	t.Run("stats", func(t *testing.T) {
		out, _ := flux.must(ctx, t, "stats")
		if r := row(t, out, "GitRepository"); !slices.Equal(r, []string{"GitRepository", "1", "0", "0", fmt.Sprint(size), "B"}) {
			t.Errorf("flux stats: %v, want GitRepository 1 0 0 %d B", r, size)
		}
		for _, kind := range []string{"OCIRepository", "HelmRepository", "HelmChart", "Bucket"} {
			if r := row(t, out, kind); !slices.Equal(r, []string{kind, "0", "0", "0", "-"}) {
				t.Errorf("flux stats: %v, want %s with nothing", r, kind)
			}
		}
	})

	t.Run("export source git", func(t *testing.T) {
		out, _ := flux.must(ctx, t, "export", "source", "git", "app")
		var o sourcev1.GitRepository
		if err := yaml.UnmarshalStrict([]byte(out), &o); err != nil {
			t.Fatalf("export is not one GitRepository: %v\n%s", err, out)
		}
		if o.APIVersion != sourcev1.GroupVersion.String() || o.Kind != sourcev1.GitRepositoryKind || o.Namespace != ns || o.Name != "app" {
			t.Errorf("exported %s %s %s/%s", o.APIVersion, o.Kind, o.Namespace, o.Name)
		}
		if o.Spec.URL != repo.URL || o.Spec.Reference == nil || o.Spec.Reference.Branch != "master" || o.Spec.Interval.Duration != time.Hour || o.Spec.Suspend {
			t.Errorf("exported spec %+v", o.Spec)
		}
		// An export is what goes into Git: no status, no server fields.
		if o.Status.Artifact != nil || len(o.Status.Conditions) != 0 || o.ResourceVersion != "" || o.UID != "" || len(o.Finalizers) != 0 {
			t.Errorf("export carries cluster state: %+v %+v", o.ObjectMeta, o.Status)
		}
	})

	t.Run("events", func(t *testing.T) {
		// The recorder sends events asynchronously: wait for the last one.
		var out string
		deadline := time.Now().Add(time.Minute)
		for {
			var err error
			if out, _, err = flux.run(ctx, "events", "--for", "GitRepository/app"); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(out, "'third'") || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Second)
		}
		t.Logf("flux events --for GitRepository/app\n%s", out)
		header := row(t, out, "LAST")
		if !slices.Equal(header, []string{"LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"}) {
			t.Errorf("header %v", header)
		}
		var newArtifacts int
		for line := range strings.Lines(out) {
			f := strings.Fields(line)
			if i := slices.Index(f, "NewArtifact"); i > 0 && i+1 < len(f) && f[i+1] == "GitRepository/app" {
				newArtifacts++
			}
		}
		// One per revision: create, reconcile, resume.
		if newArtifacts != 3 {
			t.Errorf("%d NewArtifact events for GitRepository/app, want 3", newArtifacts)
		}
		contains(t, "events", out, "stored artifact for commit 'first'", "stored artifact for commit 'second'", "stored artifact for commit 'third'")
	})

	t.Run("delete source git", func(t *testing.T) {
		art := get(t).Status.Artifact
		_, log := flux.must(ctx, t, "delete", "source", "git", "app", "--silent")
		contains(t, "delete", log, "deleting source git app in flux-system namespace", "source git deleted")
		// The leader garbage-collects the artifacts and drops the finalizer.
		if err := waitGone(ctx, env.Client, key); err != nil {
			t.Fatal(err)
		}
		u, err := url.Parse(art.URL)
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range c.Replicas {
			if code, err := status(ctx, c.ArtifactURL(i, u.Path[1:])); err != nil || code != http.StatusNotFound {
				t.Errorf("%s: GET %s after delete: %d %v, want 404", r.ID, u.Path, code, err)
			}
		}
		// The CLI fails a get that finds nothing.
		if _, errOut, err := flux.run(ctx, "get", "sources", "git"); err == nil || !strings.Contains(errOut, `no GitRepository objects found in "flux-system" namespace`) {
			t.Errorf("flux get sources git after delete: err %v, stderr %q; want no objects found", err, errOut)
		}
	})
}

func waitGone(ctx context.Context, c client.Client, key client.ObjectKey) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		var o sourcev1.GitRepository
		err := c.Get(ctx, key, &o)
		if apierrors.IsNotFound(err) {
			return nil
		}
		select {
		case <-ctx.Done():
			ready := apimeta.FindStatusCondition(o.Status.Conditions, meta.ReadyCondition)
			return fmt.Errorf("GitRepository %s still there (finalizers %v, Ready %+v, last error %v)", key, o.Finalizers, ready, errors.Join(err, ctx.Err()))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// status is the HTTP status of a GET of url.
func status(ctx context.Context, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	return resp.StatusCode, resp.Body.Close()
}
