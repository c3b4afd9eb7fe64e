// Command devcluster runs the main job of sourceraft on this machine: a
// local Kubernetes API server (etcd and kube-apiserver from bin/k8s), a
// smart-HTTP Git server, and N real source-controller replicas on loopback
// with mTLS between them and --reconcile on. Like a Flux install, it creates
// the flux-system namespace and a sample GitRepository there, waits until the
// Raft leader has reconciled it, prints its artifact URL on every replica and
// the Flux CLI commands that work against it, and keeps everything up until
// interrupted.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/internal/cluster"
	"github.com/sourceraft/sourceraft/internal/gitserver"
	"github.com/sourceraft/sourceraft/internal/testenv"
)

func main() {
	bin := flag.String("binary", "bin/source-controller", "source-controller executable")
	dir := flag.String("dir", ".run", "directory for replica data, certificates, the Git repositories, kubeconfig and logs")
	replicas := flag.Int("replicas", 3, "number of replicas")
	flux := flag.String("flux", "bin/flux", "the Flux CLI (make flux-cli builds it), named in the commands printed")
	flag.Parse()
	if err := run(*bin, *dir, *flux, *replicas); err != nil {
		fmt.Fprintln(os.Stderr, "devcluster:", err)
		os.Exit(1)
	}
}

// namespace is where a Flux install lives and where every Flux CLI command
// looks unless told otherwise.
const namespace = "flux-system"

func run(bin, dir, flux string, replicas int) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	fmt.Println("starting a local Kubernetes API server (etcd, kube-apiserver from bin/k8s)")
	env, err := testenv.StartEnv()
	if err != nil {
		return err
	}
	defer env.Stop()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := env.WriteKubeconfig(kubeconfig); err != nil {
		return err
	}

	gs, err := gitserver.Start(filepath.Join(dir, "git"), nil)
	if err != nil {
		return err
	}
	defer gs.Close()
	repo, err := gs.NewRepo("sample", filepath.Join(dir, "git-work", "sample"))
	if err != nil {
		return err
	}
	sha, err := repo.Commit("sample manifests", sampleFiles)
	if err != nil {
		return err
	}

	c, err := cluster.New(cluster.Options{Binary: bin, Dir: dir, Replicas: replicas,
		Args: []string{"--reconcile", "--kubeconfig=" + kubeconfig}})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Start(); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	leader, err := c.WaitLeader(wctx)
	if err != nil {
		return fmt.Errorf("%w (replica logs are in %s/replica-*/log)", err, dir)
	}
	fmt.Printf("cluster of %d replicas up; Raft leader %s reconciles\n", replicas, c.Replicas[leader].ID)

	// Labelled as Flux's install labels its namespace.
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace, Labels: map[string]string{
		"app.kubernetes.io/part-of": "flux", "app.kubernetes.io/instance": namespace}}}
	if err := env.Client.Create(wctx, ns); err != nil {
		return fmt.Errorf("create namespace %s: %w", namespace, err)
	}
	obj := &sourcev1.GitRepository{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: "sample"},
		Spec: sourcev1.GitRepositorySpec{
			URL:       repo.URL,
			Interval:  metav1.Duration{Duration: time.Minute},
			Reference: &sourcev1.GitRepositoryRef{Branch: "master"},
		},
	}
	if err := env.Client.Create(wctx, obj); err != nil {
		return fmt.Errorf("create GitRepository: %w", err)
	}
	art, err := waitReady(wctx, env.Client, obj, "master@sha1:"+sha)
	if err != nil {
		return fmt.Errorf("%w (replica logs are in %s/replica-*/log)", err, dir)
	}
	fmt.Printf("GitRepository %s/%s: revision %s, digest %s\n  status URL %s\n", obj.Namespace, obj.Name, art.Revision, art.Digest, art.URL)
	u, err := url.Parse(art.URL)
	if err != nil {
		return err
	}
	for i, r := range c.Replicas {
		got, err := fetchDigest(wctx, c.ArtifactURL(i, u.Path[1:]))
		if err != nil {
			return fmt.Errorf("%s: %w", r.ID, err)
		}
		if got != art.Digest {
			return fmt.Errorf("%s serves digest %s, status says %s", r.ID, got, art.Digest)
		}
		fmt.Printf("  %-10s %s  %s\n", r.ID, c.ArtifactURL(i, u.Path[1:]), got)
	}
	work := filepath.Join(dir, "git-work", "sample")
	fmt.Printf("kubectl --kubeconfig %s get gitrepositories -A\n", kubeconfig)
	fmt.Printf("new commits: git -C %s commit ... && git -C %s push origin master\n", work, work)
	printFluxCommands(flux, kubeconfig, repo.URL)
	fmt.Printf("internal API: curl -H 'Authorization: Bearer %s' http://%s%s\n", c.Token, c.Replicas[0].APIAddr, clusterapi.ClusterPath)
	fmt.Println("running; Ctrl-C stops everything")
	<-ctx.Done()
	return nil
}

// printFluxCommands tells how to drive the cluster with the Flux CLI; each
// command works against it as printed (test/fluxcli runs the same ones).
func printFluxCommands(flux, kubeconfig, repoURL string) {
	build := ""
	if _, err := os.Stat(flux); err != nil {
		build = " (not built yet: make flux-cli, a few minutes the first time)"
	}
	fmt.Printf("Flux CLI %s%s, in the %s namespace like every Flux command:\n", flux, build, namespace)
	fmt.Printf("  export KUBECONFIG=%s\n", kubeconfig)
	for _, c := range []string{
		"get sources all",
		"reconcile source git sample",
		"export source git sample",
		"events --for GitRepository/sample",
		"stats",
		"suspend source git sample",
		"resume source git sample",
		"create source git app --url=" + repoURL + " --branch=master --interval=10m",
		"delete source git app --silent",
	} {
		fmt.Printf("  %s %s\n", flux, c)
	}
	fmt.Println("  (flux check, flux version and flux logs look for Deployments and sourceraft is a StatefulSet: see the README)")
}

var sampleFiles = map[string]string{
	"deploy/kustomization.yaml": "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- configmap.yaml\n",
	"deploy/configmap.yaml":     "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: sourceraft-sample\ndata:\n  greeting: served by every replica\n",
}

func waitReady(ctx context.Context, c client.Client, obj *sourcev1.GitRepository, revision string) (*meta.Artifact, error) {
	for {
		var o sourcev1.GitRepository
		if err := c.Get(ctx, client.ObjectKeyFromObject(obj), &o); err != nil {
			return nil, err
		}
		ready := apimeta.FindStatusCondition(o.Status.Conditions, meta.ReadyCondition)
		if ready != nil && ready.Status == metav1.ConditionTrue && o.Status.Artifact != nil && o.Status.Artifact.Revision == revision {
			return o.Status.Artifact, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("GitRepository %s/%s not Ready at %s: %v", o.Namespace, o.Name, revision, o.Status.Conditions)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func fetchDigest(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	h := sha256.New()
	if _, err := io.Copy(h, resp.Body); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}
