package reconcile

import (
	"bytes"
	"net"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"helm.sh/helm/v3/pkg/chart/loader"

	"github.com/sourceraft/sourceraft/internal/helmserver"
	"github.com/sourceraft/sourceraft/internal/ociregistry"
	helmsrc "github.com/sourceraft/sourceraft/sources/helm"
)

// helmOCIRepository creates an oci HelmRepository for url, plain HTTP
// unless mutate says otherwise.
func helmOCIRepository(t *testing.T, ns, name, url string, mutate func(*sourcev1.HelmRepository)) *sourcev1.HelmRepository {
	t.Helper()
	return newHelmRepository(t, ns, name, url, func(o *sourcev1.HelmRepository) {
		o.Spec.Type = sourcev1.HelmRepositoryTypeOCI
		o.Spec.Insecure = true
		if mutate != nil {
			mutate(o)
		}
	})
}

// helmPushChart packages a chart and pushes it to reg under
// <repo>/<name>:<tag>, returning the package.
func helmPushChart(t *testing.T, reg *ociregistry.Registry, repo, tag string, spec helmserver.ChartSpec) []byte {
	t.Helper()
	data := helmserver.Package(t, spec)
	reg.PushChart(t, repo+"/"+spec.Name, tag, data)
	return data
}

// helmFailedWithMessage waits until cond is True with reason and a
// message containing msg, and Ready is False.
func helmFailedWithMessage(t *testing.T, obj *sourcev1.HelmChart, cond, reason, msg string) *sourcev1.HelmChart {
	t.Helper()
	return helmWaitFor(t, obj, 60*time.Second, cond+"="+reason+" with '"+msg+"'", func(o *sourcev1.HelmChart) bool {
		return conditions.IsTrue(o, cond) && conditions.GetReason(o, cond) == reason &&
			strings.Contains(conditions.GetMessage(o, cond), msg) && conditions.IsFalse(o, meta.ReadyCondition)
	})
}

// TestHelmChartFromOCIHelmRepository pulls an exact version and the
// newest version in a SemVer range, '+' build metadata read from a '_'
// tag, stores each chart exactly as pushed, consumable with digest
// verification, and follows a new matching tag.
func TestHelmChartFromOCIHelmRepository(t *testing.T) {
	ns := helmNamespace(t)
	reg := ociregistry.Shared(t).Open
	repo := "helmoci/" + ns
	pushed := map[string][]byte{}
	for _, v := range []string{"1.0.0", "1.2.0", "1.3.0+build.1", "2.0.0"} {
		pushed[v] = helmPushChart(t, reg, repo, v, helmserver.ChartSpec{Name: "app", Version: v})
	}
	helmOCIRepository(t, ns, "repo", reg.URL(repo), nil)

	exact := newHelmChart(t, ns, "exact", sourcev1.HelmRepositoryKind, "repo", "app", func(o *sourcev1.HelmChart) {
		o.Spec.Version = "1.2.0"
	})
	ranged := newHelmChart(t, ns, "ranged", sourcev1.HelmRepositoryKind, "repo", "app", func(o *sourcev1.HelmChart) {
		o.Spec.Version = "1.x"
		// Nothing to act on for a repository source, as in Flux.
		o.Spec.ReconcileStrategy = sourcev1.ReconcileStrategyRevision
	})

	o := helmReady(t, exact, "1.2.0")
	helmCheckChartArtifact(t, o, "app", "1.2.0")
	if o.Status.ObservedSourceArtifactRevision != "" {
		t.Errorf("observedSourceArtifactRevision %q of a static source", o.Status.ObservedSourceArtifactRevision)
	}
	if r := conditions.GetReason(o, sourcev1.ArtifactInStorageCondition); r != sourcev1.ChartPullSucceededReason {
		t.Errorf("ArtifactInStorage reason %q, want %s", r, sourcev1.ChartPullSucceededReason)
	}
	if _, data := helmLoadArtifact(t, o); !bytes.Equal(data, pushed["1.2.0"]) {
		t.Fatal("pulled chart is not stored as pushed")
	}
	helmWaitFor(t, o, 10*time.Second, "ChartPullSucceeded event", func(*sourcev1.HelmChart) bool {
		evs := eventSink.find(ns, "exact", sourcev1.ChartPullSucceededReason)
		return len(evs) > 0 && strings.Contains(evs[0].Message, "pulled 'app' chart with version '1.2.0'")
	})
	// A consumer fetches it the way helm-controller does, digest verified.
	dir := fetchFromEveryReplica(t, o.Status.Artifact)
	if _, err := loader.LoadDir(filepath.Join(dir, "app")); err != nil {
		t.Fatalf("fetched chart does not load: %v", err)
	}

	o = helmReady(t, ranged, "1.3.0+build.1")
	helmCheckChartArtifact(t, o, "app", "1.3.0+build.1")
	if _, data := helmLoadArtifact(t, o); !bytes.Equal(data, pushed["1.3.0+build.1"]) {
		t.Fatal("chart of the '_' tag is not stored as pushed")
	}

	// A chart under a sub-path: observed by its reference, stored under
	// its last element (the store has no directories).
	helmPushChart(t, reg, repo+"/sub", "0.1.0", helmserver.ChartSpec{Name: "nested", Version: "0.1.0"})
	o = helmReady(t, newHelmChart(t, ns, "nested", sourcev1.HelmRepositoryKind, "repo", "sub/nested", nil), "0.1.0")
	if o.Status.ObservedChartName != "sub/nested" || o.Status.Artifact.Path != "helmchart/"+ns+"/nested/nested-0.1.0.tgz" {
		t.Errorf("observedChartName %q, artifact %s", o.Status.ObservedChartName, o.Status.Artifact.Path)
	}
	download(t, o.Status.Artifact)

	// A newer matching tag: taken at the next reconcile.
	helmPushChart(t, reg, repo, "1.4.0", helmserver.ChartSpec{Name: "app", Version: "1.4.0"})
	helmRequestReconcile(t, ranged)
	o = helmReady(t, ranged, "1.4.0")
	helmCheckChartArtifact(t, o, "app", "1.4.0")
}

// TestHelmChartOCIAuthAndTLS pulls with basic auth and Docker config
// secrets, a CA and a client certificate from certSecretRef, and fails
// as Flux does on wrong credentials and an unknown CA.
func TestHelmChartOCIAuthAndTLS(t *testing.T) {
	ns := helmNamespace(t)
	regs := ociregistry.Shared(t)
	repo := "helmoci/" + ns
	helmPushChart(t, regs.Private, repo, "1.0.0", helmserver.ChartSpec{Name: "private", Version: "1.0.0"})
	// The TLS fronts serve the open registry's storage.
	helmPushChart(t, regs.Open, repo, "1.0.0", helmserver.ChartSpec{Name: "app", Version: "1.0.0"})
	newHelmSecret(t, ns, "basic", map[string]string{"username": ociregistry.User, "password": ociregistry.Password})
	newHelmSecret(t, ns, "wrong", map[string]string{"username": ociregistry.User, "password": "wrong"})
	ociDockerConfigSecret(t, ns, "docker", regs.Private.Host, ociregistry.User, ociregistry.Password)
	ociDockerConfigSecret(t, ns, "docker-other-host", "registry.example.com", ociregistry.User, ociregistry.Password)
	newHelmSecret(t, ns, "ca", map[string]string{"ca.crt": string(regs.TLSCA)})
	newHelmSecret(t, ns, "mtls", map[string]string{"ca.crt": string(regs.MTLSCA),
		"tls.crt": string(regs.MTLSClient.CertPEM), "tls.key": string(regs.MTLSClient.KeyPEM)})

	withSecret := func(name string) func(*sourcev1.HelmRepository) {
		return func(o *sourcev1.HelmRepository) { o.Spec.SecretRef = &meta.LocalObjectReference{Name: name} }
	}
	withCert := func(name string) func(*sourcev1.HelmRepository) {
		return func(o *sourcev1.HelmRepository) {
			o.Spec.Insecure = false
			o.Spec.CertSecretRef = &meta.LocalObjectReference{Name: name}
		}
	}
	helmOCIRepository(t, ns, "basic", regs.Private.URL(repo), withSecret("basic"))
	helmOCIRepository(t, ns, "docker", regs.Private.URL(repo), withSecret("docker"))
	helmOCIRepository(t, ns, "wrong", regs.Private.URL(repo), withSecret("wrong"))
	helmOCIRepository(t, ns, "anonymous", regs.Private.URL(repo), nil)
	helmOCIRepository(t, ns, "docker-other-host", regs.Private.URL(repo), withSecret("docker-other-host"))
	helmOCIRepository(t, ns, "no-secret", regs.Private.URL(repo), withSecret("absent"))
	helmOCIRepository(t, ns, "tls", regs.TLS.URL(repo), withCert("ca"))
	helmOCIRepository(t, ns, "mtls", regs.MTLS.URL(repo), withCert("mtls"))
	helmOCIRepository(t, ns, "unknown-ca", regs.TLS.URL(repo), func(o *sourcev1.HelmRepository) { o.Spec.Insecure = false })

	for source, chartName := range map[string]string{"basic": "private", "docker": "private", "tls": "app", "mtls": "app"} {
		o := helmReady(t, newHelmChart(t, ns, source, sourcev1.HelmRepositoryKind, source, chartName, func(o *sourcev1.HelmChart) {
			o.Spec.Version = "1.x"
		}), "1.0.0")
		helmCheckChartArtifact(t, o, chartName, "1.0.0")
		download(t, o.Status.Artifact)
	}
	for source, msg := range map[string]string{
		"wrong":             "401",
		"anonymous":         "credential",
		"docker-other-host": "no auth config for '" + regs.Private.Host + "'",
		"no-secret":         "failed to get secret",
		"unknown-ca":        "certificate",
	} {
		chartName := "private"
		if source == "unknown-ca" {
			chartName = "app"
		}
		o := helmFailedWith(t, newHelmChart(t, ns, source, sourcev1.HelmRepositoryKind, source, chartName, nil),
			sourcev1.FetchFailedCondition, sourcev1.AuthenticationFailedReason)
		if m := conditions.GetMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(m, msg) {
			t.Errorf("%s: FetchFailed message %q does not contain %q", source, m, msg)
		}
		if o.Status.Artifact != nil {
			t.Errorf("%s: artifact %v without a pull", source, o.Status.Artifact)
		}
	}
}

// TestHelmChartOCIValuesFiles merges values files into the packaged
// chart at the version with the generation as metadata, and skips a
// missing one with ignoreMissingValuesFiles.
func TestHelmChartOCIValuesFiles(t *testing.T) {
	ns := helmNamespace(t)
	reg := ociregistry.Shared(t).Open
	repo := "helmoci/" + ns
	helmPushChart(t, reg, repo, "1.0.0", helmserver.ChartSpec{Name: "app", Version: "1.0.0",
		Values: "replicas: 1\nimage:\n  repo: app\n  tag: v1\n",
		Files:  map[string][]byte{"values-prod.yaml": []byte("replicas: 3\nimage:\n  tag: v2\nprod: true\n")}})
	helmOCIRepository(t, ns, "repo", reg.URL(repo), nil)

	hc := newHelmChart(t, ns, "merged", sourcev1.HelmRepositoryKind, "repo", "app", func(o *sourcev1.HelmChart) {
		o.Spec.Version = "1.0.0"
		o.Spec.ValuesFiles = []string{"values.yaml", "values-prod.yaml"}
	})
	o := helmReady(t, hc, "1.0.0+1")
	helmCheckChartArtifact(t, o, "app", "1.0.0+1")
	if r := conditions.GetReason(o, sourcev1.ArtifactInStorageCondition); r != sourcev1.ChartPackageSucceededReason {
		t.Errorf("ArtifactInStorage reason %q, want %s", r, sourcev1.ChartPackageSucceededReason)
	}
	ch, _ := helmLoadArtifact(t, o)
	want := map[string]any{"replicas": float64(3), "prod": true, "image": map[string]any{"repo": "app", "tag": "v2"}}
	if !helmValuesEqual(ch.Values, want) || ch.Metadata.Version != "1.0.0+1" {
		t.Fatalf("packaged chart %s with values %v, want 1.0.0+1 with %v", ch.Metadata.Version, ch.Values, want)
	}
	fetchFromEveryReplica(t, o.Status.Artifact)

	updateSpec(t, o, func(o *sourcev1.HelmChart) {
		o.Spec.ValuesFiles = []string{"values.yaml", "values-absent.yaml"}
	})
	o = helmFailedWith(t, o, sourcev1.BuildFailedCondition, string(helmsrc.ReasonValuesFiles))
	updateSpec(t, o, func(o *sourcev1.HelmChart) { o.Spec.IgnoreMissingValuesFiles = true })
	o = helmReady(t, o, "1.0.0+3")
	if got := o.Status.ObservedValuesFiles; !reflect.DeepEqual(got, []string{"values.yaml"}) {
		t.Fatalf("observedValuesFiles %v, want [values.yaml]", got)
	}
}

// TestHelmChartOCIBadInputKeepsArtifact: each bad input gives its
// condition, and the previous artifact stays served.
func TestHelmChartOCIBadInputKeepsArtifact(t *testing.T) {
	ns := helmNamespace(t)
	regs := ociregistry.Shared(t)
	repo := "helmoci/" + ns
	helmPushChart(t, regs.Open, repo, "1.0.0", helmserver.ChartSpec{Name: "app", Version: "1.0.0"})
	helmPushChart(t, regs.Open, repo, "latest", helmserver.ChartSpec{Name: "app", Version: "1.1.0"})
	// Three incompressible 4 MiB files make a package over 10 MiB.
	files := map[string][]byte{}
	for _, n := range []string{"a", "b", "c"} {
		files["blobs/"+n+".bin"] = helmRandom(t, 4<<20)
	}
	helmPushChart(t, regs.Open, repo, "2.0.0", helmserver.ChartSpec{Name: "app", Version: "2.0.0", Files: files})
	regs.Open.PushFiles(t, repo+"/artifact", "1.0.0", map[string]string{"a.yaml": "not a chart"})
	helmPushChart(t, regs.Private, repo, "1.0.0", helmserver.ChartSpec{Name: "app", Version: "1.0.0"})
	repoObj := helmOCIRepository(t, ns, "repo", regs.Open.URL(repo), nil)

	hc := newHelmChart(t, ns, "app", sourcev1.HelmRepositoryKind, "repo", "app", func(o *sourcev1.HelmChart) {
		o.Spec.Version = "1.0.0"
	})
	prev := helmReady(t, hc, "1.0.0").Status.Artifact.DeepCopy()
	kept := func(t *testing.T, o *sourcev1.HelmChart) {
		t.Helper()
		if o.Status.Artifact == nil || o.Status.Artifact.Digest != prev.Digest || o.Status.ObservedChartName != "app" {
			t.Fatalf("previous artifact not kept: %+v", o.Status.Artifact)
		}
		download(t, o.Status.Artifact)
	}
	chartSpec := func(chartName, version string) func() {
		return func() {
			updateSpec(t, hc, func(o *sourcev1.HelmChart) { o.Spec.Chart, o.Spec.Version = chartName, version })
		}
	}
	repoSpec := func(mutate func(*sourcev1.HelmRepository)) func() {
		return func() {
			updateSpec(t, repoObj, mutate)
			helmRequestReconcile(t, hc)
		}
	}
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedURL := "oci://" + closed.Addr().String() + "/" + repo
	closed.Close()

	for _, tc := range []struct {
		name         string
		change       func()
		cond, reason string
		msg          string
	}{
		{"non-semver tag", chartSpec("app", "latest"), sourcev1.FetchFailedCondition, string(helmsrc.ReasonChartPull),
			"version 'latest' is neither a SemVer version nor a range"},
		{"no matching version", chartSpec("app", "5.x"), sourcev1.FetchFailedCondition, string(helmsrc.ReasonChartPull),
			"no 'app' chart with version matching '5.x' found"},
		{"missing exact version", chartSpec("app", "5.0.0"), sourcev1.FetchFailedCondition, string(helmsrc.ReasonChartPull),
			"app:5.0.0"},
		{"not a chart", chartSpec("artifact", "1.0.0"), sourcev1.FetchFailedCondition, string(helmsrc.ReasonChartPull),
			"not a Helm chart"},
		{"over the size limit", chartSpec("app", "2.0.0"), sourcev1.FetchFailedCondition, string(helmsrc.ReasonChartPull),
			"exceeds the maximum size of 10485760 bytes"},
		{"wrong credentials", repoSpec(func(o *sourcev1.HelmRepository) { o.Spec.URL = regs.Private.URL(repo) }),
			sourcev1.FetchFailedCondition, sourcev1.AuthenticationFailedReason, "failed to authenticate with the Helm repository"},
		{"unreachable", repoSpec(func(o *sourcev1.HelmRepository) { o.Spec.URL = closedURL }),
			sourcev1.FetchFailedCondition, string(helmsrc.ReasonChartPull), "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.change()
			kept(t, helmFailedWithMessage(t, hc, tc.cond, tc.reason, tc.msg))
		})
	}

	// A URL that is not oci:// stalls.
	repoSpec(func(o *sourcev1.HelmRepository) { o.Spec.URL = "https://registry.example.com/charts" })()
	kept(t, waitFailedAsFlux[*sourcev1.HelmChart](t, ns, "app", sourcev1.FetchFailedCondition, sourcev1.URLInvalidReason, true))

	// A cloud provider refuses a registry not its own, as Flux reports
	// it: retried, the credentials may be fixed.
	updateSpec(t, repoObj, func(o *sourcev1.HelmRepository) {
		o.Spec.URL, o.Spec.Provider = regs.Open.URL(repo), "aws"
	})
	helmRequestReconcile(t, hc)
	kept(t, helmFailedWithMessage(t, hc, sourcev1.FetchFailedCondition, sourcev1.AuthenticationFailedReason,
		"unable to get authentication data from OIDC: invalid AWS registry: '"+regs.Open.Host+"'"))
	if o := getObject[*sourcev1.HelmChart](t, ns, "app"); conditions.IsTrue(o, meta.StalledCondition) {
		t.Errorf("a provider's refusal stalls: %v", o.Status.Conditions)
	}

	// Fixed: the chart recovers.
	updateSpec(t, repoObj, func(o *sourcev1.HelmRepository) { o.Spec.Provider = "" })
	chartSpec("app", "1.0.0")()
	helmRequestReconcile(t, hc)
	o := helmReady(t, hc, "1.0.0")
	if conditions.Has(o, sourcev1.FetchFailedCondition) {
		t.Errorf("FetchFailed left after recovery: %v", o.Status.Conditions)
	}
}
