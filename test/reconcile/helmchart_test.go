package reconcile

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"

	"github.com/sourceraft/sourceraft/internal/helmserver"
	helmsrc "github.com/sourceraft/sourceraft/sources/helm"
)

// helmLoadArtifact downloads a chart artifact, digest-verified, and loads
// it with Helm's loader as helm-controller does.
func helmLoadArtifact(t *testing.T, o *sourcev1.HelmChart) (*chart.Chart, []byte) {
	t.Helper()
	data := download(t, o.Status.Artifact)
	ch, err := loader.LoadArchive(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("artifact %s is not a chart: %v", o.Status.Artifact.Path, err)
	}
	return ch, data
}

func helmCheckChartArtifact(t *testing.T, o *sourcev1.HelmChart, name, version string) {
	t.Helper()
	wantPath := "helmchart/" + o.Namespace + "/" + o.Name + "/" + name + "-" + version + ".tgz"
	if a := o.Status.Artifact; a.Path != wantPath || a.Revision != version || a.URL != "http://"+advAddr+"/"+wantPath {
		t.Fatalf("artifact %+v, want path %s revision %s", a, wantPath, version)
	}
	if o.Status.ObservedChartName != name {
		t.Fatalf("observedChartName %q, want %q", o.Status.ObservedChartName, name)
	}
}

// TestHelmChartFromHelmRepository picks the highest version matching a
// SemVer range from the repository's index artifact, stores the package
// exactly as published, follows a new matching version when the
// repository's index changes, and is consumable by Flux's ArchiveFetcher.
func TestHelmChartFromHelmRepository(t *testing.T) {
	ns := helmNamespace(t)
	srv := helmserver.Start(t, true)
	newHelmSecret(t, ns, "creds", map[string]string{"username": helmserver.User, "password": helmserver.Password})
	srv.Publish(helmserver.ChartSpec{Name: "app", Version: "1.0.0"})
	published := srv.Publish(helmserver.ChartSpec{Name: "app", Version: "1.2.0"})
	srv.Publish(helmserver.ChartSpec{Name: "app", Version: "2.0.0"})
	repoObj := helmReady(t, newHelmRepository(t, ns, "repo", srv.URL(), func(o *sourcev1.HelmRepository) {
		o.Spec.SecretRef = &meta.LocalObjectReference{Name: "creds"}
	}), "")

	hc := newHelmChart(t, ns, "app", sourcev1.HelmRepositoryKind, "repo", "app", func(o *sourcev1.HelmChart) {
		o.Spec.Version = "1.x"
	})
	o := helmReady(t, hc, "1.2.0")
	helmCheckChartArtifact(t, o, "app", "1.2.0")
	if o.Status.ObservedSourceArtifactRevision != repoObj.Status.Artifact.Revision {
		t.Errorf("observedSourceArtifactRevision %q, want %q", o.Status.ObservedSourceArtifactRevision, repoObj.Status.Artifact.Revision)
	}
	if r := conditions.GetReason(o, sourcev1.ArtifactInStorageCondition); r != sourcev1.ChartPullSucceededReason {
		t.Errorf("ArtifactInStorage reason %q, want %s", r, sourcev1.ChartPullSucceededReason)
	}
	ch, data := helmLoadArtifact(t, o)
	if ch.Metadata.Version != "1.2.0" {
		t.Fatalf("artifact chart version %s", ch.Metadata.Version)
	}
	orig, err := os.ReadFile(published)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(orig, data) {
		t.Fatal("pulled chart is not stored as published")
	}
	if evs := eventSink.find(ns, "app", sourcev1.ChartPullSucceededReason); len(evs) == 0 || !strings.Contains(evs[0].Message, "pulled 'app' chart with version '1.2.0'") {
		t.Fatalf("ChartPullSucceeded events: %+v", evs)
	}

	// A consumer fetches it the way helm-controller does.
	dir := fetchFromEveryReplica(t, o.Status.Artifact)
	if _, err := loader.LoadDir(filepath.Join(dir, "app")); err != nil {
		t.Fatalf("fetched chart does not load: %v", err)
	}

	// A new matching version in the index: the HelmRepository's new
	// revision alone brings the chart to it.
	srv.Publish(helmserver.ChartSpec{Name: "app", Version: "1.3.0"})
	helmRequestReconcile(t, repoObj)
	o = helmReady(t, hc, "1.3.0")
	helmCheckChartArtifact(t, o, "app", "1.3.0")
}

// TestHelmChartMissingVersion fails clearly when no version matches, and
// keeps nothing in the store.
func TestHelmChartMissingVersion(t *testing.T) {
	ns := helmNamespace(t)
	srv := helmserver.Start(t, false)
	srv.Publish(helmserver.ChartSpec{Name: "app", Version: "1.0.0"})
	helmReady(t, newHelmRepository(t, ns, "repo", srv.URL(), nil), "")

	newHelmChart(t, ns, "nine", sourcev1.HelmRepositoryKind, "repo", "app", func(o *sourcev1.HelmChart) {
		o.Spec.Version = "9.x"
	})
	o := waitFailedAsFlux[*sourcev1.HelmChart](t, ns, "nine", sourcev1.FetchFailedCondition, string(helmsrc.ReasonChartPull), false)
	if msg := conditions.GetMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(msg, "no 'app' chart with version matching '9.x' found") {
		t.Errorf("FetchFailed message %q", msg)
	}
	o = helmFailedWith(t, newHelmChart(t, ns, "other", sourcev1.HelmRepositoryKind, "repo", "nosuchchart", nil),
		sourcev1.FetchFailedCondition, string(helmsrc.ReasonChartPull))
	if msg := conditions.GetMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(msg, "no chart name 'nosuchchart'") {
		t.Errorf("FetchFailed message %q", msg)
	}
	if arts := storedOf[*sourcev1.HelmChart](t, ns, "nine"); len(arts) != 0 {
		t.Fatalf("artifacts stored for a failed chart: %+v", arts)
	}
}

// TestHelmChartValuesFiles merges values files in order into the
// packaged chart's values.yaml, with the generation as version metadata,
// fails on a missing file and skips it with ignoreMissingValuesFiles.
func TestHelmChartValuesFiles(t *testing.T) {
	ns := helmNamespace(t)
	srv := helmserver.Start(t, false)
	srv.Publish(helmserver.ChartSpec{Name: "app", Version: "1.0.0",
		Values: "replicas: 1\nimage:\n  repo: app\n  tag: v1\n",
		Files:  map[string][]byte{"values-prod.yaml": []byte("replicas: 3\nimage:\n  tag: v2\nprod: true\n")}})
	helmReady(t, newHelmRepository(t, ns, "repo", srv.URL(), nil), "")

	o := helmReady(t, newHelmChart(t, ns, "merged", sourcev1.HelmRepositoryKind, "repo", "app", func(o *sourcev1.HelmChart) {
		o.Spec.ValuesFiles = []string{"values.yaml", "values-prod.yaml"}
	}), "1.0.0+1")
	helmCheckChartArtifact(t, o, "app", "1.0.0+1")
	if r := conditions.GetReason(o, sourcev1.ArtifactInStorageCondition); r != sourcev1.ChartPackageSucceededReason {
		t.Errorf("ArtifactInStorage reason %q, want %s", r, sourcev1.ChartPackageSucceededReason)
	}
	ch, _ := helmLoadArtifact(t, o)
	want := map[string]any{"replicas": float64(3), "prod": true, "image": map[string]any{"repo": "app", "tag": "v2"}}
	if !helmValuesEqual(ch.Values, want) {
		t.Fatalf("merged values %v, want %v", ch.Values, want)
	}
	if ch.Metadata.Version != "1.0.0+1" {
		t.Fatalf("packaged chart version %s", ch.Metadata.Version)
	}

	// A missing values file is a build failure...
	o = helmFailedWith(t, newHelmChart(t, ns, "missing", sourcev1.HelmRepositoryKind, "repo", "app", func(o *sourcev1.HelmChart) {
		o.Spec.ValuesFiles = []string{"values.yaml", "values-absent.yaml"}
	}), sourcev1.BuildFailedCondition, string(helmsrc.ReasonValuesFiles))
	if msg := conditions.GetMessage(o, sourcev1.BuildFailedCondition); !strings.Contains(msg, "no values file found at path 'values-absent.yaml'") {
		t.Errorf("BuildFailed message %q", msg)
	}
	// ...unless ignored: the files used are observed.
	updateSpec(t, o, func(o *sourcev1.HelmChart) { o.Spec.IgnoreMissingValuesFiles = true })
	o = helmReady(t, o, "1.0.0+2")
	if got := o.Status.ObservedValuesFiles; !reflect.DeepEqual(got, []string{"values.yaml"}) {
		t.Fatalf("observedValuesFiles %v, want [values.yaml]", got)
	}
}

func helmValuesEqual(got map[string]any, want map[string]any) bool {
	// Helm's loader decodes numbers as float64 through JSON.
	return reflect.DeepEqual(normaliseValues(got), normaliseValues(want))
}

func normaliseValues(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			out[k] = normaliseValues(e)
		}
		return out
	case int:
		return float64(x)
	case int64:
		return float64(x)
	}
	return v
}

// TestHelmChartFromGitRepository packages a chart directory from a
// GitRepository artifact with reconcileStrategy Revision and values
// files relative to the source, and rebuilds on a new commit.
func TestHelmChartFromGitRepository(t *testing.T) {
	ns := helmNamespace(t)
	gitRepo := gitSrv.newRepo(t, "public", "helm-charts-"+ns)
	chartFiles := map[string]string{
		"charts/app/Chart.yaml":               "apiVersion: v2\nname: app\nversion: 0.1.0\n",
		"charts/app/values.yaml":              "replicas: 1\n",
		"charts/app/templates/configmap.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\n",
		"env/prod.yaml":                       "replicas: 5\n",
	}
	sha := gitRepo.commit("chart", chartFiles)
	gr := newGitRepository(t, ns, "source", gitRepo.URL, nil)
	readyAt(t, ns, "source", "master@sha1:"+sha)

	hc := newHelmChart(t, ns, "from-git", sourcev1.GitRepositoryKind, "source", "charts/app", func(o *sourcev1.HelmChart) {
		o.Spec.ReconcileStrategy = sourcev1.ReconcileStrategyRevision
		o.Spec.ValuesFiles = []string{"charts/app/values.yaml", "env/prod.yaml"}
	})
	version := "0.1.0+" + sha[:12] + ".1"
	o := helmReady(t, hc, version)
	helmCheckChartArtifact(t, o, "app", version)
	if o.Status.ObservedSourceArtifactRevision != "master@sha1:"+sha {
		t.Errorf("observedSourceArtifactRevision %q", o.Status.ObservedSourceArtifactRevision)
	}
	ch, _ := helmLoadArtifact(t, o)
	if ch.Metadata.Version != version || len(ch.Templates) != 1 {
		t.Fatalf("packaged chart %s with %d templates", ch.Metadata.Version, len(ch.Templates))
	}
	if !helmValuesEqual(ch.Values, map[string]any{"replicas": 5}) {
		t.Fatalf("merged values %v", ch.Values)
	}

	// A new commit: the GitRepository's new revision alone rebuilds the
	// chart under the new short revision.
	sha2 := gitRepo.commit("bump", map[string]string{"env/prod.yaml": "replicas: 7\n"})
	helmRequestReconcile(t, gr)
	version2 := "0.1.0+" + sha2[:12] + ".1"
	o = helmReady(t, hc, version2)
	ch, _ = helmLoadArtifact(t, o)
	if !helmValuesEqual(ch.Values, map[string]any{"replicas": 7}) {
		t.Fatalf("merged values after the new commit %v", ch.Values)
	}

	// A chart path that is not in the source stalls.
	bad := newHelmChart(t, ns, "bad-path", sourcev1.GitRepositoryKind, "source", "charts/none", nil)
	helmFailedWith(t, bad, sourcev1.FetchFailedCondition, string(helmsrc.ReasonChartReference))
}

// TestHelmChartOversizedKeepsPreviousArtifact rejects a chart over
// --helm-chart-max-size (Flux's default, 10 MiB) and keeps serving the
// previous artifact.
func TestHelmChartOversizedKeepsPreviousArtifact(t *testing.T) {
	ns := helmNamespace(t)
	srv := helmserver.Start(t, false)
	srv.Publish(helmserver.ChartSpec{Name: "big", Version: "1.0.0"})
	repoObj := helmReady(t, newHelmRepository(t, ns, "repo", srv.URL(), nil), "")
	hc := newHelmChart(t, ns, "big", sourcev1.HelmRepositoryKind, "repo", "big", nil)
	prev := helmReady(t, hc, "1.0.0").Status.Artifact.DeepCopy()

	// Three incompressible 4 MiB files (each under Helm's 5 MiB file
	// limit) make a package over 10 MiB.
	files := map[string][]byte{}
	for _, n := range []string{"a", "b", "c"} {
		files["blobs/"+n+".bin"] = helmRandom(t, 4<<20)
	}
	srv.Publish(helmserver.ChartSpec{Name: "big", Version: "2.0.0", Files: files})
	helmRequestReconcile(t, repoObj)
	o := helmFailedWith(t, hc, sourcev1.FetchFailedCondition, string(helmsrc.ReasonChartPull))
	if msg := conditions.GetMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(msg, "exceeds the maximum size") {
		t.Fatalf("FetchFailed message %q", msg)
	}
	if o.Status.Artifact == nil || o.Status.Artifact.Digest != prev.Digest {
		t.Fatalf("previous artifact not kept: %+v", o.Status.Artifact)
	}
	download(t, o.Status.Artifact)
	for _, a := range storedOf[*sourcev1.HelmChart](t, ns, "big") {
		if a.Revision == "2.0.0" {
			t.Fatalf("oversized chart stored: %s", a.Path())
		}
	}
}
