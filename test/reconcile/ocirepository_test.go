package reconcile

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	gcrv1 "github.com/google/go-containerregistry/pkg/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sourceraft/sourceraft/internal/ociregistry"
	"github.com/sourceraft/sourceraft/reconcilers"
)

func TestOCIRepositoryRefs(t *testing.T) {
	ns := newNamespace(t)
	reg := ociregistry.Shared(t).Open
	repo := "refs/" + ns
	v100 := reg.PushFiles(t, repo, "v1.0.0", map[string]string{"app.yaml": "v: 1.0.0"})
	v110 := reg.PushFiles(t, repo, "v1.1.0", map[string]string{"app.yaml": "v: 1.1.0"})
	reg.PushFiles(t, repo, "v2.0.0-rc.1", map[string]string{"app.yaml": "v: rc"})
	beta := reg.PushFiles(t, repo, "1.2.0-beta", map[string]string{"app.yaml": "v: beta"})
	latest := reg.PushFiles(t, repo, "latest", map[string]string{"app.yaml": "v: latest", "sub/dir.yaml": "sub"})

	tests := []struct {
		name     string
		ref      *sourcev1.OCIRepositoryRef
		revision string
		digest   gcrv1.Hash
		content  string
	}{
		{"default latest", nil, "latest@" + latest.String(), latest, "v: latest"},
		{"tag", &sourcev1.OCIRepositoryRef{Tag: "v1.0.0"}, "v1.0.0@" + v100.String(), v100, "v: 1.0.0"},
		{"semver highest", &sourcev1.OCIRepositoryRef{SemVer: ">=1.0.0 <2.0.0"}, "v1.1.0@" + v110.String(), v110, "v: 1.1.0"},
		{"semver filter", &sourcev1.OCIRepositoryRef{SemVer: ">=1.0.0-0 <2.0.0", SemverFilter: ".*-beta$"}, "1.2.0-beta@" + beta.String(), beta, "v: beta"},
		{"digest", &sourcev1.OCIRepositoryRef{Digest: v100.String(), Tag: "v1.1.0"}, v100.String(), v100, "v: 1.0.0"},
	}
	for _, tt := range tests {
		name := strings.ReplaceAll(tt.name, " ", "-")
		ociNew(t, ns, name, reg.URL(repo), func(o *sourcev1.OCIRepository) { o.Spec.Reference = tt.ref })
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := strings.ReplaceAll(tt.name, " ", "-")
			o := ociReadyAt(t, ns, name, tt.revision)
			files := untar(t, ociCheckArtifact(t, o, tt.digest))
			if files["app.yaml"] != tt.content {
				t.Errorf("app.yaml = %q, want %q", files["app.yaml"], tt.content)
			}
			if msg := conditions.GetMessage(o, meta.ReadyCondition); msg != "stored artifact for digest '"+tt.revision+"'" {
				t.Errorf("Ready message %q", msg)
			}
			if o.Status.Artifact.Metadata["org.opencontainers.image.source"] != "https://example.com/"+repo {
				t.Errorf("artifact metadata %v, want the manifest annotations", o.Status.Artifact.Metadata)
			}
			if conditions.Has(o, meta.ReconcilingCondition) || conditions.Has(o, meta.StalledCondition) {
				t.Errorf("Reconciling or Stalled left on a Ready object: %v", o.Status.Conditions)
			}
		})
	}

	t.Run("new artifact event with origin", func(t *testing.T) {
		o := ociGet(t, ns, "tag")
		evs := eventSink.await(t, ns, "tag", "NewArtifact", 10*time.Second)
		ev := evs[len(evs)-1]
		want := "stored artifact with revision '" + o.Status.Artifact.Revision + "' from '" + reg.URL(repo) +
			"', origin source 'https://example.com/" + repo + "', origin revision 'v1.0.0@sha1:0123456789abcdef0123456789abcdef01234567'"
		if ev.Message != want {
			t.Errorf("event message %q, want %q", ev.Message, want)
		}
		if ev.Metadata["source.toolkit.fluxcd.io/revision"] != o.Status.Artifact.Revision ||
			ev.Metadata["source.toolkit.fluxcd.io/digest"] != o.Status.Artifact.Digest {
			t.Errorf("event metadata %v", ev.Metadata)
		}
	})

	t.Run("consumer fetches with digest verification", func(t *testing.T) {
		o := ociGet(t, ns, "semver-highest")
		dir := fetchFromEveryReplica(t, o.Status.Artifact)
		if got, err := os.ReadFile(filepath.Join(dir, "app.yaml")); err != nil || string(got) != "v: 1.1.0" {
			t.Fatalf("extracted app.yaml: %q, %v", got, err)
		}
		if err := newFetcher().Fetch(o.Status.Artifact.URL, "sha256:"+strings.Repeat("0", 64), t.TempDir()); err == nil {
			t.Fatal("ArchiveFetcher accepted the artifact under a wrong digest")
		}
	})
}

func TestOCIRepositoryLayerSelector(t *testing.T) {
	ns := newNamespace(t)
	reg := ociregistry.Shared(t).Open
	repo := "layers/" + ns
	readme := []byte("not a tarball")
	content := ociregistry.TarGz(t, map[string]string{"deploy/app.yaml": "app", "docs/readme.md": "docs", "logo.png": "png"})
	digest := reg.Push(t, repo, "v1", ociregistry.Layer{MediaType: "text/markdown", Data: readme}, ociregistry.Layer{MediaType: ociregistry.FluxContentType, Data: content})
	revision := "v1@" + digest.String()
	ignore := "docs/\n"
	ociNew(t, ns, "extract", reg.URL(repo), func(o *sourcev1.OCIRepository) {
		o.Spec.Reference = &sourcev1.OCIRepositoryRef{Tag: "v1"}
		o.Spec.LayerSelector = &sourcev1.OCILayerSelector{MediaType: ociregistry.FluxContentType}
		o.Spec.Ignore = &ignore
	})
	ociNew(t, ns, "copy", reg.URL(repo), func(o *sourcev1.OCIRepository) {
		o.Spec.Reference = &sourcev1.OCIRepositoryRef{Tag: "v1"}
		o.Spec.LayerSelector = &sourcev1.OCILayerSelector{MediaType: ociregistry.FluxContentType, Operation: sourcev1.OCILayerCopy}
	})
	ociNew(t, ns, "first-layer", reg.URL(repo), func(o *sourcev1.OCIRepository) {
		o.Spec.Reference = &sourcev1.OCIRepositoryRef{Tag: "v1"}
	})
	ociNew(t, ns, "missing-type", reg.URL(repo), func(o *sourcev1.OCIRepository) {
		o.Spec.Reference = &sourcev1.OCIRepositoryRef{Tag: "v1"}
		o.Spec.LayerSelector = &sourcev1.OCILayerSelector{MediaType: "application/x-nope"}
	})

	t.Run("extract re-archives with ignore rules", func(t *testing.T) {
		o := ociReadyAt(t, ns, "extract", revision)
		data := ociCheckArtifact(t, o, digest)
		if got := fileNames(untar(t, data)); strings.Join(got, ",") != "deploy/app.yaml" {
			t.Errorf("artifact files %q, want only deploy/app.yaml (docs/ by spec.ignore, *.png by default)", got)
		}
		if o.Status.ObservedIgnore == nil || *o.Status.ObservedIgnore != ignore ||
			o.Status.ObservedLayerSelector == nil || o.Status.ObservedLayerSelector.MediaType != ociregistry.FluxContentType {
			t.Errorf("observed ignore %v, layer selector %+v", o.Status.ObservedIgnore, o.Status.ObservedLayerSelector)
		}
		// Deterministic: the same content gives the same artifact digest.
		if o2 := ociReadyAt(t, ns, "copy", revision); o2.Status.Artifact.Digest == o.Status.Artifact.Digest {
			t.Error("extract and copy gave the same bytes")
		}

		// A changed spec.ignore rebuilds the same revision.
		updateSpec(t, o, func(o *sourcev1.OCIRepository) { o.Spec.Ignore = nil })
		old := o.Status.Artifact.Digest
		o = ociWaitFor(t, ns, "extract", 60*time.Second, "a re-archived artifact", func(o *sourcev1.OCIRepository) bool {
			return conditions.IsReady(o) && o.Status.ObservedGeneration == o.Generation && o.Status.Artifact.Digest != old
		})
		if got := fileNames(untar(t, ociCheckArtifact(t, o, digest))); strings.Join(got, ",") != "deploy/app.yaml,docs/readme.md" {
			t.Errorf("artifact files without spec.ignore %q", got)
		}
	})

	t.Run("copy stores the layer as it is", func(t *testing.T) {
		o := ociReadyAt(t, ns, "copy", revision)
		data := ociCheckArtifact(t, o, digest)
		if !bytes.Equal(data, content) {
			t.Fatalf("copied artifact (%d bytes) differs from the layer (%d bytes)", len(data), len(content))
		}
		sum := sha256.Sum256(content)
		if o.Status.Artifact.Digest != "sha256:"+hex.EncodeToString(sum[:]) {
			t.Errorf("artifact digest %s is not the layer digest", o.Status.Artifact.Digest)
		}
	})

	t.Run("default is the first layer", func(t *testing.T) {
		o := ociFailedWith(t, ns, "first-layer", sourcev1.FetchFailedCondition, sourcev1.OCILayerOperationFailedReason)
		if msg := conditions.GetMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(msg, "requires gzip-compressed body") {
			t.Errorf("FetchFailed message %q", msg)
		}
	})

	t.Run("no layer of the media type", func(t *testing.T) {
		o := ociFailedWith(t, ns, "missing-type", sourcev1.FetchFailedCondition, sourcev1.OCILayerOperationFailedReason)
		if msg := conditions.GetMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(msg, "failed to find layer with media type 'application/x-nope'") {
			t.Errorf("FetchFailed message %q", msg)
		}
	})
}

func TestOCIRepositoryAuth(t *testing.T) {
	ns := newNamespace(t)
	priv := ociregistry.Shared(t).Private
	digest := priv.PushFiles(t, "private/app", "v1", map[string]string{"secret.yaml": "private"})
	ociDockerConfigSecret(t, ns, "good", priv.Host, ociregistry.User, ociregistry.Password)
	ociDockerConfigSecret(t, ns, "bad", priv.Host, ociregistry.User, "wrong")
	opaque := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "opaque"}, StringData: map[string]string{"username": ociregistry.User}}
	if err := env.Client.Create(context.Background(), opaque); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		secret  string
		reason  string
		message string
	}{
		{"good credentials", "good", "", ""},
		{"wrong password", "bad", sourcev1.OCIPullFailedReason, "UNAUTHORIZED"},
		{"no credentials", "", sourcev1.OCIPullFailedReason, "UNAUTHORIZED"},
		{"missing secret", "absent", sourcev1.AuthenticationFailedReason, "failed to get secret '" + ns + "/absent'"},
		{"not a docker config", "opaque", sourcev1.AuthenticationFailedReason, "has no '.dockerconfigjson' key"},
	}
	for _, tt := range tests {
		ociNew(t, ns, strings.ReplaceAll(tt.name, " ", "-"), priv.URL("private/app"), func(o *sourcev1.OCIRepository) {
			o.Spec.Reference = &sourcev1.OCIRepositoryRef{Tag: "v1"}
			if tt.secret != "" {
				o.Spec.SecretRef = &meta.LocalObjectReference{Name: tt.secret}
			}
		})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := strings.ReplaceAll(tt.name, " ", "-")
			if tt.reason == "" {
				o := ociReadyAt(t, ns, name, "v1@"+digest.String())
				if files := untar(t, ociCheckArtifact(t, o, digest)); files["secret.yaml"] != "private" {
					t.Errorf("artifact files %v", fileNames(files))
				}
				return
			}
			o := ociFailedWith(t, ns, name, sourcev1.FetchFailedCondition, tt.reason)
			if msg := conditions.GetMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(msg, tt.message) {
				t.Errorf("FetchFailed message %q does not mention %q", msg, tt.message)
			}
			if conditions.IsTrue(o, meta.StalledCondition) || o.Status.Artifact != nil {
				t.Errorf("want not stalled (credentials may be fixed) and no artifact: %v", o.Status.Conditions)
			}
		})
	}

	t.Run("secret created later recovers", func(t *testing.T) {
		ociNew(t, ns, "late", priv.URL("private/app"), func(o *sourcev1.OCIRepository) {
			o.Spec.Reference = &sourcev1.OCIRepositoryRef{Tag: "v1"}
			o.Spec.SecretRef = &meta.LocalObjectReference{Name: "late"}
		})
		ociFailedWith(t, ns, "late", sourcev1.FetchFailedCondition, sourcev1.AuthenticationFailedReason)
		ociDockerConfigSecret(t, ns, "late", "https://"+priv.Host+"/v1/", ociregistry.User, ociregistry.Password)
		o := ociReadyAt(t, ns, "late", "v1@"+digest.String())
		if conditions.Has(o, sourcev1.FetchFailedCondition) {
			t.Errorf("FetchFailed left after recovery: %v", o.Status.Conditions)
		}
	})
}

func TestOCIRepositoryTLS(t *testing.T) {
	ns := newNamespace(t)
	open := ociregistry.Shared(t).Open
	tlsReg := ociregistry.Shared(t).TLS
	// Pushed over plain HTTP: the TLS front serves the same storage.
	digest := open.PushFiles(t, "tls/"+ns, "v1", map[string]string{"a.yaml": "tls"})
	ca := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ca"}, Data: map[string][]byte{"ca.crt": ociregistry.Shared(t).TLSCA}}
	if err := env.Client.Create(context.Background(), ca); err != nil {
		t.Fatal(err)
	}
	secure := func(o *sourcev1.OCIRepository) {
		o.Spec.Insecure = false
		o.Spec.Reference = &sourcev1.OCIRepositoryRef{Tag: "v1"}
	}
	ociNew(t, ns, "with-ca", tlsReg.URL("tls/"+ns), func(o *sourcev1.OCIRepository) {
		secure(o)
		o.Spec.CertSecretRef = &meta.LocalObjectReference{Name: "ca"}
	})
	ociNew(t, ns, "unknown-ca", tlsReg.URL("tls/"+ns), secure)
	// The plain HTTP registry without spec.insecure: refused, although
	// go-containerregistry would fall back to HTTP for a loopback host.
	ociNew(t, ns, "plain-http", open.URL("tls/"+ns), secure)

	o := ociReadyAt(t, ns, "with-ca", "v1@"+digest.String())
	if files := untar(t, ociCheckArtifact(t, o, digest)); files["a.yaml"] != "tls" {
		t.Errorf("artifact files %v", fileNames(files))
	}
	o = ociFailedWith(t, ns, "unknown-ca", sourcev1.FetchFailedCondition, sourcev1.OCIPullFailedReason)
	if msg := conditions.GetMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(msg, "certificate") {
		t.Errorf("FetchFailed message %q does not mention the certificate", msg)
	}
	o = ociFailedWith(t, ns, "plain-http", sourcev1.FetchFailedCondition, sourcev1.OCIPullFailedReason)
	if msg := conditions.GetMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(msg, "set spec.insecure") {
		t.Errorf("FetchFailed message %q does not point at spec.insecure", msg)
	}
}

func TestOCIRepositoryInvalid(t *testing.T) {
	ns := newNamespace(t)
	reg := ociregistry.Shared(t).Open
	reg.PushFiles(t, "invalid/"+ns, "v1", map[string]string{"a": "a"})
	url := reg.URL("invalid/" + ns)
	// A registry that answers nothing before the client gives up.
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}))
	t.Cleanup(slow.Close)
	tests := []struct {
		name    string
		mutate  func(*sourcev1.OCIRepository)
		cond    string
		reason  string
		stalled bool
		message string
	}{
		{"tag in url", func(o *sourcev1.OCIRepository) { o.Spec.URL = url + ":v1" }, sourcev1.FetchFailedCondition, sourcev1.URLInvalidReason, true, "URL must not contain a tag; remove ':v1'"},
		{"no repository", func(o *sourcev1.OCIRepository) { o.Spec.URL = "oci://" + reg.Host }, sourcev1.FetchFailedCondition, sourcev1.URLInvalidReason, true, "URL validation failed"},
		{"upper case", func(o *sourcev1.OCIRepository) { o.Spec.URL = "oci://" + reg.Host + "/Invalid/Repo" }, sourcev1.FetchFailedCondition, sourcev1.URLInvalidReason, true, "repository can only contain"},
		{"unknown tag", func(o *sourcev1.OCIRepository) { o.Spec.Reference = &sourcev1.OCIRepositoryRef{Tag: "v9"} }, sourcev1.FetchFailedCondition, sourcev1.OCIPullFailedReason, false, "MANIFEST_UNKNOWN"},
		{"no semver match", func(o *sourcev1.OCIRepository) { o.Spec.Reference = &sourcev1.OCIRepositoryRef{SemVer: ">=5.0.0"} }, sourcev1.FetchFailedCondition, sourcev1.ReadOperationFailedReason, false, "no match found for semver: >=5.0.0"},
		{"invalid semver", func(o *sourcev1.OCIRepository) { o.Spec.Reference = &sourcev1.OCIRepositoryRef{SemVer: "not a range"} }, sourcev1.FetchFailedCondition, sourcev1.OCIPullFailedReason, true, "semver 'not a range' parse error"},
		{"invalid digest", func(o *sourcev1.OCIRepository) { o.Spec.Reference = &sourcev1.OCIRepositoryRef{Digest: "sha256:abc"} }, sourcev1.FetchFailedCondition, sourcev1.OCIPullFailedReason, true, "digest 'sha256:abc'"},
		{"unknown digest", func(o *sourcev1.OCIRepository) {
			o.Spec.Reference = &sourcev1.OCIRepositoryRef{Digest: "sha256:" + strings.Repeat("ab", 32)}
		}, sourcev1.FetchFailedCondition, sourcev1.OCIPullFailedReason, false, "MANIFEST_UNKNOWN"},
		{"nothing listening", func(o *sourcev1.OCIRepository) { o.Spec.URL = "oci://127.0.0.1:1/app" }, sourcev1.FetchFailedCondition, sourcev1.OCIPullFailedReason, false, "connection refused"},
		{"timeout", func(o *sourcev1.OCIRepository) {
			o.Spec.URL = "oci://" + strings.TrimPrefix(slow.URL, "http://") + "/app"
			o.Spec.Timeout = &metav1.Duration{Duration: time.Second}
		}, sourcev1.FetchFailedCondition, sourcev1.OCIPullFailedReason, false, "context deadline exceeded"},
	}
	for _, tt := range tests {
		ociNew(t, ns, strings.ReplaceAll(tt.name, " ", "-"), url, tt.mutate)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := ociFailedWith(t, ns, strings.ReplaceAll(tt.name, " ", "-"), tt.cond, tt.reason)
			if msg := conditions.GetMessage(o, tt.cond); !strings.Contains(msg, tt.message) {
				t.Errorf("%s message %q does not mention %q", tt.cond, msg, tt.message)
			}
			o = waitFailedAsFlux[*sourcev1.OCIRepository](t, ns, o.Name, tt.cond, tt.reason, tt.stalled)
			if conditions.GetMessage(o, meta.ReadyCondition) != conditions.GetMessage(o, tt.cond) || o.Status.Artifact != nil {
				t.Errorf("Ready message %q, artifact %v", conditions.GetMessage(o, meta.ReadyCondition), o.Status.Artifact)
			}
		})
	}
}

// TestOCIRepositoryUpdatesAndLimits follows one tag through a new push,
// two oversized pushes (one over the compressed layer limit, one that
// only decompresses past the archive limit) and a recovery; then
// suspension and deletion.
func TestOCIRepositoryUpdatesAndLimits(t *testing.T) {
	ns := newNamespace(t)
	reg := ociregistry.Shared(t).Open
	repo := "updates/" + ns
	first := reg.PushFiles(t, repo, "stable", map[string]string{"a.txt": "first"})
	ociNew(t, ns, "app", reg.URL(repo), func(o *sourcev1.OCIRepository) {
		o.Spec.Reference = &sourcev1.OCIRepositoryRef{Tag: "stable"}
	})
	ociReadyAt(t, ns, "app", "stable@"+first.String())

	second := reg.PushFiles(t, repo, "stable", map[string]string{"a.txt": "second"})
	ociRequestReconcile(t, ns, "app")
	before := ociReadyAt(t, ns, "app", "stable@"+second.String())
	if files := untar(t, ociCheckArtifact(t, before, second)); files["a.txt"] != "second" {
		t.Fatalf("artifact after a new push: %v", files)
	}

	random := make([]byte, archiveMaxSize+32<<10)
	if _, err := rand.Read(random); err != nil {
		t.Fatal(err)
	}
	bomb := strings.Repeat("0", 4*archiveMaxSize)
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"compressed layer over the limit", map[string]string{"random.bin": string(random)}, "bytes compressed"},
		{"content over the limit once extracted", map[string]string{"zeros.txt": bomb}, "bigger than max archive size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			big := reg.PushFiles(t, repo, "stable", tc.files)
			ociRequestReconcile(t, ns, "app")
			// The previous subtest left BuildFailed too: wait for this revision's.
			o := ociWaitFor(t, ns, "app", 60*time.Second, "BuildFailed for stable@"+big.String(), func(o *sourcev1.OCIRepository) bool {
				return conditions.IsTrue(o, sourcev1.BuildFailedCondition) && conditions.IsFalse(o, meta.ReadyCondition) &&
					conditions.GetReason(o, sourcev1.BuildFailedCondition) == reconcilers.ArchiveLimitReason &&
					strings.Contains(conditions.GetMessage(o, sourcev1.BuildFailedCondition), big.String())
			})
			msg := conditions.GetMessage(o, sourcev1.BuildFailedCondition)
			if !strings.Contains(msg, "stable@"+big.String()) || !strings.Contains(msg, "archive limit exceeded") || !strings.Contains(msg, tc.want) {
				t.Errorf("BuildFailed message %q", msg)
			}
			// The previous artifact is still the status artifact, still served.
			if o.Status.Artifact == nil || o.Status.Artifact.Digest != before.Status.Artifact.Digest {
				t.Fatalf("status artifact changed to %+v", o.Status.Artifact)
			}
			if files := untar(t, download(t, o.Status.Artifact)); files["a.txt"] != "second" {
				t.Errorf("previous artifact content %v", fileNames(files))
			}
			for _, a := range ociStored(t, ns, "app") {
				if strings.Contains(a.File, big.Hex) {
					t.Errorf("an artifact of the oversized revision was stored: %s", a.Path())
				}
			}
		})
	}

	fixed := reg.PushFiles(t, repo, "stable", map[string]string{"a.txt": "fixed"})
	ociRequestReconcile(t, ns, "app")
	o := ociReadyAt(t, ns, "app", "stable@"+fixed.String())
	if conditions.Has(o, sourcev1.BuildFailedCondition) || conditions.Has(o, sourcev1.ArtifactOutdatedCondition) {
		t.Errorf("failure conditions left after recovery: %v", o.Status.Conditions)
	}
	if n := len(storedAfterGC[*sourcev1.OCIRepository](t, ns, "app", 2)); n != 2 {
		t.Errorf("store holds %d artifacts of the object, want 2 (retention records)", n)
	}

	t.Run("suspended", func(t *testing.T) {
		o := ociGet(t, ns, "app")
		updateSpec(t, o, func(o *sourcev1.OCIRepository) { o.Spec.Suspend = true })
		// Once a request is handled while suspended, no reconcile that
		// started before the suspension can still be running.
		handled := func(at string) {
			ociWaitFor(t, ns, "app", 30*time.Second, "requestedAt handled while suspended", func(o *sourcev1.OCIRepository) bool {
				return o.Status.LastHandledReconcileAt == at
			})
		}
		handled(ociRequestReconcile(t, ns, "app"))
		reg.PushFiles(t, repo, "stable", map[string]string{"a.txt": "while suspended"})
		handled(ociRequestReconcile(t, ns, "app"))
		time.Sleep(500 * time.Millisecond)
		if o := ociGet(t, ns, "app"); o.Status.Artifact.Revision != "stable@"+fixed.String() {
			t.Fatalf("suspended object moved to %s", o.Status.Artifact.Revision)
		}
	})

	t.Run("deleted", func(t *testing.T) {
		o := ociGet(t, ns, "app")
		if len(o.Finalizers) != 1 || o.Finalizers[0] != sourcev1.SourceFinalizer {
			t.Fatalf("finalizers %v", o.Finalizers)
		}
		deleteAndWait(t, o)
		if arts := ociStored(t, ns, "app"); len(arts) != 0 {
			t.Fatalf("store still holds %d artifacts of the deleted object", len(arts))
		}
	})
}
