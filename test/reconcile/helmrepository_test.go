package reconcile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"helm.sh/helm/v3/pkg/repo"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/sourceraft/sourceraft/internal/helmserver"
	helmsrc "github.com/sourceraft/sourceraft/sources/helm"
)

// helmIndexRevision is Flux's revision of an index: the sha256 of the
// index.yaml as fetched.
func helmIndexRevision(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// TestHelmRepositoryIndex stores the normalised index under Flux's name
// and revision, serves it digest-verified, follows a growing index with a
// new artifact while GC keeps the configured records, and deletes the
// artifacts with the object.
func TestHelmRepositoryIndex(t *testing.T) {
	ns := helmNamespace(t)
	srv := helmserver.Start(t, false)
	srv.Publish(helmserver.ChartSpec{Name: "app", Version: "1.0.0"})
	srv.Publish(helmserver.ChartSpec{Name: "db", Version: "0.1.0"})
	rev1 := helmIndexRevision(srv.IndexBytes())

	obj := newHelmRepository(t, ns, "charts", srv.URL(), nil)
	o := helmReady(t, obj, rev1)
	hex1 := strings.TrimPrefix(rev1, "sha256:")
	wantPath := "helmrepository/" + ns + "/charts/index-" + hex1 + ".yaml"
	if a := o.Status.Artifact; a.Path != wantPath || a.URL != "http://"+advAddr+"/"+wantPath || o.Status.URL != "http://"+advAddr+"/helmrepository/"+ns+"/charts/index.yaml" {
		t.Fatalf("artifact path %q url %q status url %q, want %s", a.Path, a.URL, o.Status.URL, wantPath)
	}
	if !conditions.IsTrue(o, sourcev1.ArtifactInStorageCondition) {
		t.Fatalf("ArtifactInStorage not True: %v", o.Status.Conditions)
	}
	var idx repo.IndexFile
	if err := json.Unmarshal(download(t, o.Status.Artifact), &idx); err != nil {
		t.Fatalf("artifact is not a JSON index: %v", err)
	}
	if len(idx.Entries["app"]) != 1 || idx.Entries["app"][0].Version != "1.0.0" || len(idx.Entries["db"]) != 1 {
		t.Fatalf("artifact index entries: %+v", idx.Entries)
	}
	if evs := eventSink.find(ns, "charts", "NewArtifact"); len(evs) == 0 || !strings.Contains(evs[0].Message, "stored fetched index of size") {
		t.Fatalf("NewArtifact events: %+v", evs)
	}

	// The index grows: a new revision, a new artifact, entries sorted
	// newest first.
	srv.Publish(helmserver.ChartSpec{Name: "app", Version: "1.1.0"})
	rev2 := helmIndexRevision(srv.IndexBytes())
	helmRequestReconcile(t, o)
	o = helmReady(t, o, rev2)
	idx = repo.IndexFile{}
	if err := json.Unmarshal(download(t, o.Status.Artifact), &idx); err != nil {
		t.Fatal(err)
	}
	if vs := idx.Entries["app"]; len(vs) != 2 || vs[0].Version != "1.1.0" || vs[1].Version != "1.0.0" {
		t.Fatalf("app entries after publishing 1.1.0: %+v", vs)
	}
	if arts := storedAfterGC[*sourcev1.HelmRepository](t, ns, "charts", 2); len(arts) != 2 {
		t.Fatalf("store holds %d artifacts, want the 2 records GC keeps: %+v", len(arts), arts)
	}

	// A third revision: GC keeps at most 2 records, the current included.
	srv.Publish(helmserver.ChartSpec{Name: "app", Version: "1.2.0"})
	rev3 := helmIndexRevision(srv.IndexBytes())
	helmRequestReconcile(t, o)
	o = helmReady(t, o, rev3)
	arts := storedAfterGC[*sourcev1.HelmRepository](t, ns, "charts", 2)
	if len(arts) != 2 {
		t.Fatalf("store holds %d artifacts after the third revision, want 2: %+v", len(arts), arts)
	}
	// Which older one is kept is not asserted: LastUpdateTime has second
	// resolution, so revisions stored within one second tie.
	kept := false
	for _, a := range arts {
		kept = kept || a.Path() == o.Status.Artifact.Path
	}
	if !kept {
		t.Fatalf("GC removed the current artifact %s: %+v", o.Status.Artifact.Path, arts)
	}

	// Deleting the object deletes its artifacts, then the object.
	deleteAndWait(t, o)
	if arts := storedOf[*sourcev1.HelmRepository](t, ns, "charts"); len(arts) != 0 {
		t.Fatalf("artifacts left after deletion: %+v", arts)
	}
}

// TestHelmRepositoryAuth fetches with basic auth from secretRef, fails
// with wrong credentials and with a missing secret.
func TestHelmRepositoryAuth(t *testing.T) {
	ns := helmNamespace(t)
	srv := helmserver.Start(t, true)
	srv.Publish(helmserver.ChartSpec{Name: "app", Version: "1.0.0"})
	newHelmSecret(t, ns, "good", map[string]string{"username": helmserver.User, "password": helmserver.Password})
	newHelmSecret(t, ns, "bad", map[string]string{"username": helmserver.User, "password": "wrong"})

	good := newHelmRepository(t, ns, "good", srv.URL(), func(o *sourcev1.HelmRepository) {
		o.Spec.SecretRef = &meta.LocalObjectReference{Name: "good"}
	})
	bad := newHelmRepository(t, ns, "bad", srv.URL(), func(o *sourcev1.HelmRepository) {
		o.Spec.SecretRef = &meta.LocalObjectReference{Name: "bad"}
	})
	anon := newHelmRepository(t, ns, "anonymous", srv.URL(), nil)
	missing := newHelmRepository(t, ns, "missing", srv.URL(), func(o *sourcev1.HelmRepository) {
		o.Spec.SecretRef = &meta.LocalObjectReference{Name: "nope"}
	})

	helmReady(t, good, helmIndexRevision(srv.IndexBytes()))
	for _, o := range []*sourcev1.HelmRepository{bad, anon} {
		o = waitFailedAsFlux[*sourcev1.HelmRepository](t, ns, o.Name, sourcev1.FetchFailedCondition, meta.FailedReason, false)
		if msg := conditions.GetMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(msg, "401") {
			t.Errorf("%s: FetchFailed message %q does not report the 401", o.Name, msg)
		}
		if o.Status.Artifact != nil {
			t.Errorf("%s: artifact without credentials: %+v", o.Name, o.Status.Artifact)
		}
	}
	m := helmFailedWith(t, missing, sourcev1.FetchFailedCondition, sourcev1.AuthenticationFailedReason)
	if msg := conditions.GetMessage(m, sourcev1.FetchFailedCondition); !strings.Contains(msg, "failed to get secret '"+ns+"/nope'") {
		t.Errorf("missing secret message: %q", msg)
	}

	// Creating the secret recovers on the next reconcile.
	newHelmSecret(t, ns, "nope", map[string]string{"username": helmserver.User, "password": helmserver.Password})
	helmRequestReconcile(t, m)
	helmReady(t, missing, "")
}

// TestHelmRepositoryInvalidURL stalls on URLs that cannot name an HTTP(S)
// Helm repository.
func TestHelmRepositoryInvalidURL(t *testing.T) {
	ns := helmNamespace(t)
	for name, url := range map[string]string{
		"oci-scheme": "oci://registry.example.com/charts",
		"no-host":    "http:///charts",
	} {
		newHelmRepository(t, ns, name, url, nil)
		o := waitFailedAsFlux[*sourcev1.HelmRepository](t, ns, name, sourcev1.FetchFailedCondition, sourcev1.URLInvalidReason, true)
		if msg := conditions.GetMessage(o, meta.ReadyCondition); !strings.Contains(msg, "invalid Helm repository URL") {
			t.Errorf("%s: Ready message %q", name, msg)
		}
	}
}

// TestHelmRepositoryOCIIsStatic: an oci HelmRepository is a static object
// as in Flux v1: switching a default one to oci deletes its artifacts,
// its finalizer and its status.
func TestHelmRepositoryOCIIsStatic(t *testing.T) {
	ns := helmNamespace(t)
	srv := helmserver.Start(t, false)
	srv.Publish(helmserver.ChartSpec{Name: "app", Version: "1.0.0"})
	o := helmReady(t, newHelmRepository(t, ns, "switch", srv.URL(), nil), "")

	updateSpec(t, o, func(o *sourcev1.HelmRepository) {
		o.Spec.Type = sourcev1.HelmRepositoryTypeOCI
		o.Spec.URL = "oci://registry.example.com/charts"
	})
	helmWaitFor(t, o, 30*time.Second, "static object", func(o *sourcev1.HelmRepository) bool {
		return !controllerutil.ContainsFinalizer(o, sourcev1.SourceFinalizer) && len(o.Status.Conditions) == 0 && o.Status.Artifact == nil
	})
	if arts := storedOf[*sourcev1.HelmRepository](t, ns, "switch"); len(arts) != 0 {
		t.Fatalf("artifacts left after switching to oci: %+v", arts)
	}

	fresh := newHelmRepository(t, ns, "fresh", "oci://registry.example.com/charts", func(o *sourcev1.HelmRepository) {
		o.Spec.Type = sourcev1.HelmRepositoryTypeOCI
	})
	time.Sleep(2 * time.Second)
	if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(fresh), fresh); err != nil {
		t.Fatal(err)
	}
	if len(fresh.Finalizers) != 0 || len(fresh.Status.Conditions) != 0 {
		t.Fatalf("oci HelmRepository got finalizers %v or conditions %v", fresh.Finalizers, fresh.Status.Conditions)
	}
}

// TestHelmRepositoryIndexTooLarge refuses an index over
// --helm-index-max-size (Flux's default, 50 MiB) with FetchFailed, both
// when the server declares its length and when the body is cut off
// while streaming, and keeps no artifact; a repository whose index grows
// over the limit keeps its previous artifact, still served.
func TestHelmRepositoryIndexTooLarge(t *testing.T) {
	ns := helmNamespace(t)
	line := []byte("# padding of an index over the limit\n")
	size := int(helmsrc.DefaultIndexMaxSize) + len(line)
	small := []byte("apiVersion: v1\nentries: {}\n")
	var grown atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/declared/index.yaml" {
			w.Header().Set("Content-Length", strconv.Itoa(size))
		}
		if r.URL.Path == "/grows/index.yaml" && !grown.Load() {
			w.Write(small)
			return
		}
		w.Write(small)
		for n := 0; n < size; n += len(line) {
			if _, err := w.Write(line); err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	for _, name := range []string{"declared", "streamed"} {
		obj := newHelmRepository(t, ns, name, srv.URL+"/"+name, nil)
		o := helmFailedWith(t, obj, sourcev1.FetchFailedCondition, meta.FailedReason)
		if msg := conditions.GetMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(msg, "exceeds the maximum size") {
			t.Errorf("%s: FetchFailed message %q", name, msg)
		}
		if o.Status.Artifact != nil {
			t.Errorf("%s: artifact of an index over the limit: %+v", name, o.Status.Artifact)
		}
	}

	obj := newHelmRepository(t, ns, "grows", srv.URL+"/grows", nil)
	before := helmReady(t, obj, helmIndexRevision(small))
	served := download(t, before.Status.Artifact)
	grown.Store(true)
	helmRequestReconcile(t, before)
	o := helmFailedWith(t, obj, sourcev1.FetchFailedCondition, meta.FailedReason)
	if msg := conditions.GetMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(msg, "exceeds the maximum size") {
		t.Errorf("grown index: FetchFailed message %q", msg)
	}
	if o.Status.Artifact == nil || o.Status.Artifact.Digest != before.Status.Artifact.Digest {
		t.Fatalf("grown index: status artifact %+v, want the previous %+v", o.Status.Artifact, before.Status.Artifact)
	}
	if !bytes.Equal(download(t, o.Status.Artifact), served) {
		t.Error("grown index: the previous artifact is no longer served as it was")
	}
}
