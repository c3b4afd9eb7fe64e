// Package ociregistry runs real OCI registries (distribution's handlers
// with the in-memory storage driver) on loopback for tests, and pushes
// artifacts to them the way `flux push artifact` does. The registries
// start on first use and live until the test binary exits.
package ociregistry

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/subtle"
	"crypto/tls"
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

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
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
	"helm.sh/helm/v3/pkg/registry"

	"github.com/sourceraft/sourceraft/internal/pki"

	// The registry's storage driver and access controller register
	// themselves by name.
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
)

// The media types `flux push artifact` writes.
const (
	FluxContentType = "application/vnd.cncf.flux.content.v1.tar+gzip"
	FluxConfigType  = "application/vnd.cncf.flux.config.v1+json"
)

// Credentials of the private registry.
const (
	User     = "flux"
	Password = "s3cr3t-pull"
)

// Registry is one registry on loopback.
type Registry struct {
	// Host is host:port.
	Host string
	// Auth is what pushes authenticate with.
	Auth authn.Authenticator
	// plainHTTP: pushes speak HTTP, not HTTPS.
	plainHTTP bool
}

// Registries are the registries the tests of one binary share: an open
// one (plain HTTP), one behind htpasswd basic auth (User, Password), a
// TLS front of the open one's storage whose certificate is TLSCA, and a
// mutual-TLS front of it that requires a client certificate of MTLSCA.
type Registries struct {
	Open, Private, TLS, MTLS *Registry
	// TLSCA is the PEM certificate the TLS registry serves.
	TLSCA []byte
	// MTLSCA signs the MTLS registry's certificate and the client
	// certificate it accepts, MTLSClient (PEM).
	MTLSCA     []byte
	MTLSClient pki.Pair
}

var (
	once   sync.Once
	shared *Registries
	errReg error
)

// Shared returns the test binary's registries, starting them on first
// use. Set RECONCILE_TEST_LOG to see the registries' logs.
func Shared(t testing.TB) *Registries {
	t.Helper()
	once.Do(func() { shared, errReg = start() })
	if errReg != nil {
		t.Fatal(errReg)
	}
	return shared
}

func start() (*Registries, error) {
	quiet()
	dir, err := os.MkdirTemp("", "oci-registry-")
	if err != nil {
		return nil, err
	}
	private, err := htpasswdAuth(dir, User, Password)
	if err != nil {
		return nil, err
	}
	open := newApp(nil)
	r := &Registries{
		Open:    newRegistry(httptest.NewServer(open), nil),
		Private: newRegistry(httptest.NewServer(newApp(private)), &authn.Basic{Username: User, Password: Password}),
	}
	tlsSrv := httptest.NewUnstartedServer(open)
	// Clients without the CA are expected: keep their handshake errors quiet.
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0)
	tlsSrv.StartTLS()
	r.TLS = newRegistry(tlsSrv, nil)
	r.TLSCA = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw})
	if r.MTLS, r.MTLSCA, r.MTLSClient, err = startMTLS(open); err != nil {
		return nil, err
	}
	return r, nil
}

// quiet discards the registries' logs unless RECONCILE_TEST_LOG is set.
func quiet() {
	if os.Getenv("RECONCILE_TEST_LOG") == "" {
		logrus.SetOutput(io.Discard)
	}
}

// htpasswdAuth is the access controller of a registry that lets only
// user with password in, its htpasswd file written into dir.
func htpasswdAuth(dir, user, password string) (configuration.Auth, error) {
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(dir, "htpasswd-")
	if err != nil {
		return nil, err
	}
	if _, err := f.WriteString(user + ":" + string(hash) + "\n"); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	return configuration.Auth{"htpasswd": configuration.Parameters{"realm": "sourceraft-test", "path": f.Name()}}, nil
}

// newApp is a registry with its own in-memory storage behind auth (nil:
// open).
func newApp(auth configuration.Auth) http.Handler {
	cfg := &configuration.Configuration{}
	cfg.Storage = configuration.Storage{"inmemory": configuration.Parameters{}}
	cfg.Auth = auth
	cfg.HTTP.Secret = "sourceraft-test-secret"
	cfg.Log.AccessLog.Disabled = true
	return handlers.NewApp(context.Background(), cfg)
}

// Named is a registry of its own storage, reached under a host name
// (a cloud registry's, say) that the caller routes to Addr, serving
// HTTPS with a certificate for that name to user with password only.
type Named struct {
	*Registry
	// Addr is the loopback address it listens on.
	Addr string
	srv  *httptest.Server
}

// Route is a handler served beside a Named registry on its host, under a
// ServeMux pattern: a cloud registry's own endpoints, such as a token
// exchange.
type Route struct {
	Pattern string
	Handler http.Handler
}

// StartNamed starts a Named registry for host with pair's certificate
// (the caller's CA must be a system root of the process for pushes),
// serving routes beside the registry's API.
func StartNamed(host string, pair pki.Pair, user, password string, routes ...Route) (*Named, error) {
	quiet()
	var app http.Handler
	if len(password) > bcryptMaxPassword {
		// A token too long for htpasswd (an ACR refresh token, say).
		app = basicAuth(newApp(nil), user, password)
	} else {
		dir, err := os.MkdirTemp("", "oci-registry-")
		if err != nil {
			return nil, err
		}
		auth, err := htpasswdAuth(dir, user, password)
		if err != nil {
			return nil, err
		}
		app = newApp(auth)
	}
	cert, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/", app)
	for _, r := range routes {
		mux.Handle(r.Pattern, r.Handler)
	}
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	return &Named{Registry: &Registry{Host: host, Auth: &authn.Basic{Username: user, Password: password}},
		Addr: srv.Listener.Addr().String(), srv: srv}, nil
}

// Close stops the registry.
func (n *Named) Close() { n.srv.Close() }

// bcryptMaxPassword is the longest password bcrypt, htpasswd's only hash
// in distribution, takes.
const bcryptMaxPassword = 72

// basicAuth lets only user with password through to h, refusing others
// as distribution's htpasswd access controller does.
func basicAuth(h http.Handler, user, password string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(user)) != 1 || subtle.ConstantTimeCompare([]byte(p), []byte(password)) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="sourceraft-test"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}`+"\n")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// startMTLS serves h over TLS to clients with a certificate of a new CA.
func startMTLS(h http.Handler) (*Registry, []byte, pki.Pair, error) {
	ca, err := pki.NewCA("ociregistry")
	if err != nil {
		return nil, nil, pki.Pair{}, err
	}
	srvPair, err := ca.IssueLoopback("registry")
	if err != nil {
		return nil, nil, pki.Pair{}, err
	}
	client, err := ca.IssueLoopback("client")
	if err != nil {
		return nil, nil, pki.Pair{}, err
	}
	cfg, err := ca.TLSConfig(srvPair)
	if err != nil {
		return nil, nil, pki.Pair{}, err
	}
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = cfg
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	return newRegistry(srv, nil), ca.PEM, client, nil
}

func newRegistry(srv *httptest.Server, auth authn.Authenticator) *Registry {
	if auth == nil {
		auth = authn.Anonymous
	}
	return &Registry{Host: strings.TrimPrefix(strings.TrimPrefix(srv.URL, "http://"), "https://"), Auth: auth,
		plainHTTP: strings.HasPrefix(srv.URL, "http://")}
}

// URL is the oci:// URL of a repository in this registry.
func (r *Registry) URL(repo string) string { return "oci://" + r.Host + "/" + repo }

// Layer is one layer of a pushed artifact.
type Layer struct {
	MediaType string
	Data      []byte
}

// Push writes an artifact of the given layers under repo:tag the way
// `flux push artifact` does (OCI manifest, Flux config media type,
// source and revision annotations) and returns its manifest digest.
func (r *Registry) Push(t testing.TB, repo, tag string, layers ...Layer) gcrv1.Hash {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, FluxConfigType)
	for _, l := range layers {
		var err error
		img, err = mutate.Append(img, mutate.Addendum{Layer: static.NewLayer(l.Data, types.MediaType(l.MediaType))})
		if err != nil {
			t.Fatal(err)
		}
	}
	img = mutate.Annotations(img, map[string]string{
		"org.opencontainers.image.source":   "https://example.com/" + repo,
		"org.opencontainers.image.revision": tag + "@sha1:0123456789abcdef0123456789abcdef01234567",
	}).(gcrv1.Image)
	ref, err := name.NewTag(r.Host+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithAuth(r.Auth)); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// PushChart pushes a packaged chart under <repo>:<tag> with Helm's
// registry client, as `helm push` does (tag as given, a '+' pushed as
// '_'), and returns its manifest digest. A TLS registry's certificate
// must be trusted by the system's roots.
func (r *Registry) PushChart(t testing.TB, repo, tag string, chart []byte) string {
	t.Helper()
	opts := []registry.ClientOption{registry.ClientOptWriter(io.Discard),
		registry.ClientOptCredentialsFile(filepath.Join(t.TempDir(), "config.json"))}
	if r.plainHTTP {
		opts = append(opts, registry.ClientOptPlainHTTP())
	}
	cfg, err := r.Auth.Authorization()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Username != "" {
		opts = append(opts, registry.ClientOptBasicAuth(cfg.Username, cfg.Password))
	}
	rc, err := registry.NewClient(opts...)
	if err != nil {
		t.Fatal(err)
	}
	res, err := rc.Push(chart, r.Host+"/"+repo+":"+tag, registry.PushOptStrictMode(false))
	if err != nil {
		t.Fatalf("push chart %s:%s: %v", repo, tag, err)
	}
	return res.Manifest.Digest
}

// PushFiles pushes a Flux-style artifact: one tar.gz layer of files.
func (r *Registry) PushFiles(t testing.TB, repo, tag string, files map[string]string) gcrv1.Hash {
	t.Helper()
	return r.Push(t, repo, tag, Layer{FluxContentType, TarGz(t, files)})
}

// TarGz packs files into a tar.gz, in name order.
func TarGz(t testing.TB, files map[string]string) []byte {
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
