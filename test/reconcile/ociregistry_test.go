package reconcile

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	gcrv1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/bcrypt"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	// The registry's storage driver and access controller register
	// themselves by name.
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
)

// The media types `flux push artifact` writes.
const (
	ociFluxContentType = "application/vnd.cncf.flux.content.v1.tar+gzip"
	ociFluxConfigType  = "application/vnd.cncf.flux.config.v1+json"
)

// Credentials of the private registry.
const (
	ociUser = "flux"
	ociPass = "s3cr3t-pull"
)

// ociRegistry is a real OCI registry (distribution's handlers with the
// in-memory storage driver) on loopback.
type ociRegistry struct {
	srv  *httptest.Server
	host string
	auth authn.Authenticator
}

// ociRegistries holds the registries the OCI tests share: an open one,
// one behind htpasswd basic auth, and a TLS front of the open one's
// storage. They start on first use and live until the test binary exits.
var ociRegistries struct {
	once          sync.Once
	err           error
	open, private *ociRegistry
	tls           *ociRegistry
	tlsCA         []byte
}

func ociRegs(t *testing.T) (open, private, tlsReg *ociRegistry) {
	t.Helper()
	r := &ociRegistries
	r.once.Do(func() { r.err = startOCIRegistries() })
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.open, r.private, r.tls
}

func startOCIRegistries() error {
	if os.Getenv("RECONCILE_TEST_LOG") == "" {
		logrus.SetOutput(io.Discard)
	}
	dir, err := os.MkdirTemp("", "oci-registry-")
	if err != nil {
		return err
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(ociPass), bcrypt.MinCost)
	if err != nil {
		return err
	}
	htpasswd := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(htpasswd, []byte(ociUser+":"+string(hash)+"\n"), 0o600); err != nil {
		return err
	}
	newApp := func(auth configuration.Auth) http.Handler {
		cfg := &configuration.Configuration{}
		cfg.Storage = configuration.Storage{"inmemory": configuration.Parameters{}}
		cfg.Auth = auth
		cfg.HTTP.Secret = "sourceraft-test-secret"
		cfg.Log.AccessLog.Disabled = true
		return handlers.NewApp(context.Background(), cfg)
	}
	open := newApp(nil)
	ociRegistries.open = newOCIRegistry(httptest.NewServer(open), nil)
	ociRegistries.private = newOCIRegistry(httptest.NewServer(newApp(configuration.Auth{
		"htpasswd": configuration.Parameters{"realm": "sourceraft-test", "path": htpasswd},
	})), &authn.Basic{Username: ociUser, Password: ociPass})
	tlsSrv := httptest.NewUnstartedServer(open)
	// Clients without the CA are expected: keep their handshake errors quiet.
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0)
	tlsSrv.StartTLS()
	ociRegistries.tls = newOCIRegistry(tlsSrv, nil)
	ociRegistries.tlsCA = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw})
	return nil
}

func newOCIRegistry(srv *httptest.Server, auth authn.Authenticator) *ociRegistry {
	if auth == nil {
		auth = authn.Anonymous
	}
	return &ociRegistry{srv: srv, host: strings.TrimPrefix(strings.TrimPrefix(srv.URL, "http://"), "https://"), auth: auth}
}

// url is the spec.url of a repository in this registry.
func (r *ociRegistry) url(repo string) string { return "oci://" + r.host + "/" + repo }

// ociLayer is one layer of a pushed artifact.
type ociLayer struct {
	mediaType string
	data      []byte
}

// push writes an artifact of the given layers under repo:tag the way
// `flux push artifact` does (OCI manifest, Flux config media type,
// source and revision annotations) and returns its manifest digest.
func (r *ociRegistry) push(t *testing.T, repo, tag string, layers ...ociLayer) gcrv1.Hash {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, ociFluxConfigType)
	for _, l := range layers {
		var err error
		img, err = mutate.Append(img, mutate.Addendum{Layer: static.NewLayer(l.data, types.MediaType(l.mediaType))})
		if err != nil {
			t.Fatal(err)
		}
	}
	img = mutate.Annotations(img, map[string]string{
		"org.opencontainers.image.source":   "https://example.com/" + repo,
		"org.opencontainers.image.revision": tag + "@sha1:0123456789abcdef0123456789abcdef01234567",
	}).(gcrv1.Image)
	ref, err := name.NewTag(r.host+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithAuth(r.auth)); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// pushFiles pushes a Flux-style artifact: one tar.gz layer of files.
func (r *ociRegistry) pushFiles(t *testing.T, repo, tag string, files map[string]string) gcrv1.Hash {
	t.Helper()
	return r.push(t, repo, tag, ociLayer{ociFluxContentType, ociTarGz(t, files)})
}

// ociTarGz packs files into a tar.gz, in name order.
func ociTarGz(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(files[n])), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(files[n])); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// ociDockerConfigSecret creates a kubernetes.io/dockerconfigjson Secret
// for host.
func ociDockerConfigSecret(t *testing.T, ns, name, host, user, pass string) {
	t.Helper()
	cfg, err := json.Marshal(map[string]any{"auths": map[string]any{
		host: map[string]string{"username": user, "password": pass, "auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))},
	}})
	if err != nil {
		t.Fatal(err)
	}
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: cfg},
	}
	if err := env.Client.Create(context.Background(), s); err != nil {
		t.Fatal(err)
	}
}

// ociNew creates an insecure (plain HTTP) OCIRepository with a long
// interval, so that only spec changes and requestedAt annotations
// trigger reconciles.
func ociNew(t *testing.T, ns, name, url string, mutate func(*sourcev1.OCIRepository)) *sourcev1.OCIRepository {
	t.Helper()
	obj := &sourcev1.OCIRepository{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: sourcev1.OCIRepositorySpec{
			URL:      url,
			Insecure: true,
			Interval: metav1.Duration{Duration: time.Hour},
			Timeout:  &metav1.Duration{Duration: 20 * time.Second},
		},
	}
	return createObject(t, obj, mutate)
}

// The OCIRepository forms of the generic helpers (main_test.go).
var (
	ociGet              = getObject[*sourcev1.OCIRepository]
	ociWaitFor          = waitForObject[*sourcev1.OCIRepository]
	ociReadyAt          = waitReady[*sourcev1.OCIRepository]
	ociFailedWith       = waitFailed[*sourcev1.OCIRepository]
	ociRequestReconcile = requestReconcileOf[*sourcev1.OCIRepository]
	ociStored           = storedOf[*sourcev1.OCIRepository]
)

// ociCheckArtifact checks the status artifact against Flux's layout for
// manifest digest, downloads it and returns its bytes.
func ociCheckArtifact(t *testing.T, o *sourcev1.OCIRepository, digest gcrv1.Hash) []byte {
	t.Helper()
	a := o.Status.Artifact
	wantPath := "ocirepository/" + o.Namespace + "/" + o.Name + "/" + digest.String() + ".tar.gz"
	if a.Path != wantPath {
		t.Errorf("artifact path %q, want %q", a.Path, wantPath)
	}
	if a.URL != "http://"+advAddr+"/"+wantPath || o.Status.URL != a.URL {
		t.Errorf("artifact URL %q, status URL %q, want http://%s/%s", a.URL, o.Status.URL, advAddr, wantPath)
	}
	if !conditions.IsTrue(o, sourcev1.ArtifactInStorageCondition) {
		t.Errorf("ArtifactInStorage is not True: %v", o.Status.Conditions)
	}
	return download(t, a)
}
