package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"github.com/go-logr/logr"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chartutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/sourceraft/sourceraft/internal/cluster"
	"github.com/sourceraft/sourceraft/internal/freeport"
	"github.com/sourceraft/sourceraft/internal/testenv"
)

// The helmindex phase: Flux users run out of memory on large Helm
// repository indexes (fluxcd/source-controller#192, #303). A HelmRepository
// with a 100 MiB index.yaml and helmIndexCharts HelmCharts from it
// reconcile at --concurrent=helmIndexCharts against a real API server
// (envtest); the leader's peak RSS increase is the figure, and its ratio
// to the index's size the target.
const (
	helmIndexSize   = 100 * mib
	helmIndexCharts = 4
	// helmIndexMaxSize is --helm-index-max-size, above Flux's 50 MiB
	// default for the index and for its stored JSON form.
	helmIndexMaxSize = 512 * mib
	// helmIndexVersions per chart in the generated index.
	helmIndexVersions = 100
)

// helmIndexArgs are the reconciling replicas' flags but the kubeconfig.
var helmIndexArgs = []string{"--reconcile", "--concurrent=" + strconv.Itoa(helmIndexCharts),
	"--helm-index-max-size=" + strconv.Itoa(helmIndexMaxSize)}

// helmIndexEnv is what both subjects of the phase share: the control
// plane, its kubeconfig and the served repository.
type helmIndexEnv struct {
	env        *testenv.Env
	kubeconfig string
	repoURL    string
	indexBytes int64
}

// withHelmIndexEnv writes the repository, serves it from a FileServer
// process, starts envtest and runs fn.
func (b *bench) withHelmIndexEnv(ctx context.Context, fn func(*helmIndexEnv) error) error {
	dir := filepath.Join(b.root, "helm-repo")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	n, err := writeHelmIndex(filepath.Join(dir, "index.yaml"), helmIndexSize)
	if err != nil {
		return fmt.Errorf("write index: %w", err)
	}
	for c := range helmIndexCharts {
		name, version := helmIndexChart(c)
		ch := &chart.Chart{Metadata: &chart.Metadata{APIVersion: chart.APIVersionV2, Name: name, Version: version}}
		if _, err := chartutil.Save(ch, dir); err != nil {
			return fmt.Errorf("save chart %s: %w", name, err)
		}
	}
	fs, err := startFileServer(ctx, dir)
	if err != nil {
		return err
	}
	defer fs.stop()
	// The bench reads objects only; controller-runtime's own logs would
	// be noise (and it warns, with a stack, when it has no logger).
	ctrllog.SetLogger(logr.Discard())
	env, err := testenv.StartEnv()
	if err != nil {
		return err
	}
	defer env.Stop()
	kubeconfig := filepath.Join(b.root, "kubeconfig")
	if err := env.WriteKubeconfig(kubeconfig); err != nil {
		return err
	}
	return fn(&helmIndexEnv{env: env, kubeconfig: kubeconfig, repoURL: fs.url, indexBytes: n})
}

// helmIndex measures sourceraft, then upstream when b.cfg.upstream names
// its binary. Flux's source-controller v1.7.0 builds here (Go 1.26) in a
// throwaway module requiring it, with the go-digest replace of DESIGN.md
// and GONOSUMDB=github.com/fluxcd/pkg (the checksum database does not
// know fluxcd/pkg/git/gogit v0.40.0).
func (b *bench) helmIndex(ctx context.Context) error {
	return b.withHelmIndexEnv(ctx, func(he *helmIndexEnv) error {
		b.res.set("helm_index_bytes", he.indexBytes)
		args := append(slices.Clone(helmIndexArgs), "--kubeconfig="+he.kubeconfig)
		err := b.withCluster(ctx, "cluster-d", args, func(c *cluster.Cluster) error {
			leader, err := c.WaitLeader(ctx)
			if err != nil {
				return err
			}
			return b.helmIndexRun(ctx, he, "helm_index_", c.PID(leader))
		})
		if err != nil || b.cfg.upstream == "" {
			return err
		}
		return b.helmIndexUpstream(ctx, he)
	})
}

// helmIndexUpstream runs Flux's source-controller on the same control
// plane, limited to a namespace of its own, and measures it the same way.
func (b *bench) helmIndexUpstream(ctx context.Context, he *helmIndexEnv) error {
	ns, err := he.env.NewNamespace(ctx, "upstream")
	if err != nil {
		return err
	}
	dir := filepath.Join(b.root, "upstream")
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o750); err != nil {
		return err
	}
	var ports [3]string
	for i := range ports {
		if ports[i], err = freeport.Addr(); err != nil {
			return err
		}
	}
	logf, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(b.cfg.upstream, "--watch-all-namespaces=false", "--enable-leader-election=false",
		"--storage-path="+filepath.Join(dir, "data"), "--storage-addr="+ports[0], "--storage-adv-addr="+ports[0],
		"--metrics-addr="+ports[1], "--health-addr="+ports[2],
		"--concurrent="+strconv.Itoa(helmIndexCharts), "--helm-index-max-size="+strconv.Itoa(helmIndexMaxSize))
	// Upstream has no --kubeconfig flag; controller-runtime reads $KUBECONFIG.
	cmd.Env = append(os.Environ(), "RUNTIME_NAMESPACE="+ns, "KUBECONFIG="+he.kubeconfig)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start upstream: %w", err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	return b.helmIndexRunIn(ctx, he, "upstream", "upstream_helm_index_", cmd.Process.Pid, ns)
}

func (b *bench) helmIndexRun(ctx context.Context, he *helmIndexEnv, prefix string, pid int) error {
	ns, err := he.env.NewNamespace(ctx, "helmindex")
	if err != nil {
		return err
	}
	return b.helmIndexRunIn(ctx, he, "leader", prefix, pid, ns)
}

// helmIndexRunIn creates the HelmRepository and its HelmCharts in ns
// and samples pid's memory until every one is Ready.
func (b *bench) helmIndexRunIn(ctx context.Context, he *helmIndexEnv, subject, prefix string, pid int, ns string) error {
	// Let the manager start and its caches sync before the baseline.
	time.Sleep(5 * time.Second)
	before, err := readProcMem(pid)
	if err != nil {
		return err
	}
	smp := startSampler(ctx, []int{pid})
	start := time.Now()
	c := he.env.Client
	interval := metav1.Duration{Duration: time.Hour}
	repo := &sourcev1.HelmRepository{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "big"},
		Spec: sourcev1.HelmRepositorySpec{URL: he.repoURL, Interval: interval, Timeout: &metav1.Duration{Duration: 5 * time.Minute}}}
	objs := []client.Object{repo}
	for i := range helmIndexCharts {
		name, _ := helmIndexChart(i)
		objs = append(objs, &sourcev1.HelmChart{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: sourcev1.HelmChartSpec{Chart: name, Version: "*", Interval: interval,
				SourceRef: sourcev1.LocalHelmChartSourceReference{Kind: sourcev1.HelmRepositoryKind, Name: repo.Name}}})
	}
	for _, o := range objs {
		if err := c.Create(ctx, o); err != nil {
			smp.stop()
			return fmt.Errorf("create %s: %w", o.GetName(), err)
		}
	}
	var repoReady time.Duration
	wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	for pending := objs; len(pending) > 0; {
		var still []client.Object
		for _, o := range pending {
			if err := c.Get(wctx, client.ObjectKeyFromObject(o), o); err != nil {
				smp.stop()
				return err
			}
			if !conditions.IsTrue(o.(conditions.Getter), meta.ReadyCondition) {
				still = append(still, o)
			} else if o == client.Object(repo) {
				repoReady = time.Since(start)
			}
		}
		pending = still
		if len(pending) == 0 {
			break
		}
		select {
		case <-wctx.Done():
			smp.stop()
			return fmt.Errorf("%d of %d objects not Ready after %s: %s", len(pending), len(objs), time.Since(start).Round(time.Second), readyMessage(pending[0]))
		case <-time.After(200 * time.Millisecond):
		}
	}
	took := time.Since(start)
	peaks, samples, err := smp.stop()
	if err != nil {
		return fmt.Errorf("sample memory: %w", err)
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(repo), repo); err != nil {
		return err
	}
	inc := peaks[pid].VmRSS - before.VmRSS
	b.res.set(prefix+"100mb_peak_rss_mib", toMiB(inc))
	b.res.set(prefix+"rss_ratio_vs_index_size", round(float64(inc)/float64(he.indexBytes), 2))
	b.res.set(prefix+"rss_before_mib", toMiB(before.VmRSS))
	b.res.set(prefix+"peak_rss_anon_increase_mib", toMiB(peaks[pid].RssAnon-before.RssAnon))
	b.res.set(prefix+"ready_seconds", round(took.Seconds(), 1))
	b.res.set(prefix+"repository_ready_seconds", round(repoReady.Seconds(), 1))
	b.res.set(prefix+"rss_samples", samples)
	if a := repo.Status.Artifact; a != nil && a.Size != nil {
		b.res.set(prefix+"artifact_bytes", *a.Size)
	}
	b.res.detail(subject+" RSS, helm index", "%.1f -> peak %.1f MiB (+%.1f, anon +%.1f) for a %.1f MiB index and %d charts, all Ready in %.1fs (repository %.1fs)",
		toMiB(before.VmRSS), toMiB(peaks[pid].VmRSS), toMiB(inc), toMiB(peaks[pid].RssAnon-before.RssAnon),
		toMiB(he.indexBytes), helmIndexCharts, took.Seconds(), repoReady.Seconds())
	return nil
}

func readyMessage(o client.Object) string {
	g, ok := o.(conditions.Getter)
	if !ok {
		return o.GetName()
	}
	return fmt.Sprintf("%s: %s", o.GetName(), conditions.GetMessage(g, meta.ReadyCondition))
}

// helmIndexChart is the name and newest version of the i-th chart of
// the generated index.
func helmIndexChart(i int) (string, string) {
	v := helmIndexVersions - 1
	return fmt.Sprintf("chart-%05d", i), fmt.Sprintf("%d.%d.%d", v/10, v%10, i%3)
}

// writeHelmIndex writes a block-style index.yaml of about size bytes, as
// `helm repo index` lays it out, with what real entries carry
// (descriptions, maintainers, keywords, dependencies, digests), and
// returns its size.
func writeHelmIndex(path string, size int64) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	n, _ := fmt.Fprintf(w, "apiVersion: v1\nentries:\n")
	total := int64(n)
	created := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	for c := 0; total < size; c++ {
		name, _ := helmIndexChart(c)
		n, _ := fmt.Fprintf(w, "  %s:\n", name)
		total += int64(n)
		for v := helmIndexVersions - 1; v >= 0; v-- {
			version := fmt.Sprintf("%d.%d.%d", v/10, v%10, c%3)
			n, _ := fmt.Fprintf(w, `  - annotations:
      category: Infrastructure
      licenses: Apache-2.0
    apiVersion: v2
    appVersion: %d.%d.0
    created: "%s"
    dependencies:
    - name: common
      repository: oci://registry.example.com/charts
      tags:
      - common
      version: 2.x.x
    description: A chart that deploys %s, generated for the sourceraft benchmark of large Helm repository indexes.
    digest: %064x
    home: https://example.com/charts/%s
    icon: https://example.com/icons/%s.svg
    keywords:
    - benchmark
    - %s
    maintainers:
    - email: charts@example.com
      name: Bench Maintainers
    name: %s
    sources:
    - https://example.com/src/%s
    urls:
    - %s-%s.tgz
    version: %s
`, v/10, v%10, created.Add(time.Duration(c*helmIndexVersions+v)*time.Minute).Format(time.RFC3339), name, c*1000+v,
				name, name, name, name, name, name, version, version)
			total += int64(n)
		}
	}
	n, _ = fmt.Fprintf(w, "generated: \"2024-01-02T03:04:05Z\"\n")
	total += int64(n)
	if err := w.Flush(); err != nil {
		f.Close()
		return 0, err
	}
	return total, f.Close()
}
