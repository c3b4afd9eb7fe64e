package oci

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sourceraft/sourceraft/archive"
	"github.com/sourceraft/sourceraft/internal/ociregistry"
)

func newClient(t *testing.T, url string, o Options) *Client {
	t.Helper()
	c, err := NewClient(t.Context(), url, o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestResolveAndPullFromRegistry(t *testing.T) {
	reg := ociregistry.Shared(t).Open
	repo := "sources/" + strings.ToLower(t.Name())
	v1 := reg.PushFiles(t, repo, "v1.0.0", map[string]string{"app.yaml": "v1"})
	v2 := reg.Push(t, repo, "v1.1.0",
		ociregistry.Layer{MediaType: "text/markdown", Data: []byte("readme")},
		ociregistry.Layer{MediaType: ociregistry.FluxContentType, Data: ociregistry.TarGz(t, map[string]string{"app.yaml": "v2", "sub/b.yaml": "b"})})
	reg.PushFiles(t, repo, "latest", map[string]string{"app.yaml": "latest"})
	c := newClient(t, reg.URL(repo), Options{Insecure: true})

	for name, tt := range map[string]struct {
		ref      Reference
		revision string
	}{
		"tag":               {Reference{Tag: "v1.0.0"}, "v1.0.0@" + v1.String()},
		"semver":            {Reference{SemVer: "1.x"}, "v1.1.0@" + v2.String()},
		"semver filtered":   {Reference{SemVer: "1.x", SemverFilter: "0$"}, "v1.1.0@" + v2.String()},
		"digest":            {Reference{Digest: v1.String()}, v1.String()},
		"digest over tag":   {Reference{Tag: "v1.1.0", Digest: v1.String()}, v1.String()},
		"latest by default": {Reference{}, ""},
	} {
		got, err := c.Resolve(tt.ref)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if tt.revision != "" && got.Revision() != tt.revision {
			t.Errorf("%s: revision %s, want %s", name, got.Revision(), tt.revision)
		}
		if tt.revision == "" && got.Tag != "latest" {
			t.Errorf("%s: tag %q, want latest", name, got.Tag)
		}
	}

	ref, err := c.Resolve(Reference{Tag: "v1.1.0"})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "content")
	pulled, err := c.Pull(ref, PullOptions{MediaType: ociregistry.FluxContentType, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "sub", "b.yaml")); err != nil || string(b) != "b" {
		t.Errorf("extracted sub/b.yaml: %q, %v", b, err)
	}
	if pulled.Annotations[SourceAnnotation] != "https://example.com/"+repo || !strings.HasPrefix(pulled.LayerDigest, "sha256:") {
		t.Errorf("pulled %+v", pulled)
	}

	file := filepath.Join(t.TempDir(), "layer.tgz")
	if _, err := c.Pull(ref, PullOptions{Copy: true, File: file}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "readme" {
		t.Errorf("copied first layer %q, %v; want the markdown layer as it is", b, err)
	}

	if _, err := c.Pull(ref, PullOptions{MediaType: "application/x-none", Dir: t.TempDir()}); !errors.Is(err, ErrLayer) {
		t.Errorf("missing media type: error %v, want ErrLayer", err)
	}
	if _, err := c.Pull(ref, PullOptions{Copy: true, File: filepath.Join(t.TempDir(), "l"), Limits: Limits{Layer: 3}}); !errors.As(err, new(*archive.LimitError)) {
		t.Errorf("layer over the limit: error %v, want a LimitError", err)
	}
	if _, err := c.Resolve(Reference{SemVer: ">=5.0.0"}); !errors.Is(err, ErrListTags) {
		t.Errorf("no tag in range: error %v, want ErrListTags", err)
	}
	if _, err := c.Resolve(Reference{Tag: "missing"}); err == nil {
		t.Error("a missing tag resolved")
	}
	if _, err := c.Resolve(Reference{Digest: "sha256:short"}); !errors.Is(err, ErrInvalidReference) {
		t.Errorf("malformed digest: error %v, want ErrInvalidReference", err)
	}

	// Without Insecure the client refuses the registry's plain HTTP,
	// which go-containerregistry would fall back to for loopback.
	secure := newClient(t, reg.URL(repo), Options{})
	if _, err := secure.Resolve(Reference{Tag: "v1.0.0"}); err == nil || !strings.Contains(err.Error(), "plain HTTP") {
		t.Errorf("plain HTTP without Insecure: error %v", err)
	}
}

func TestPrivateRegistryCredentials(t *testing.T) {
	regs := ociregistry.Shared(t)
	repo := "sources/private"
	regs.Private.PushFiles(t, repo, "v1", map[string]string{"a": "a"})
	config := func(pass string) Credentials {
		b, err := json.Marshal(map[string]any{"auths": map[string]any{
			regs.Private.Host: map[string]string{"username": ociregistry.User, "password": pass},
		}})
		if err != nil {
			t.Fatal(err)
		}
		creds, err := ParseDockerConfig(b, nil)
		if err != nil {
			t.Fatal(err)
		}
		return creds
	}
	if _, err := newClient(t, regs.Private.URL(repo), Options{Insecure: true}).Resolve(Reference{Tag: "v1"}); err == nil {
		t.Error("anonymous resolve on the private registry succeeded")
	}
	if _, err := newClient(t, regs.Private.URL(repo), Options{Insecure: true, Credentials: config("wrong")}).Resolve(Reference{Tag: "v1"}); err == nil {
		t.Error("resolve with a wrong password succeeded")
	}
	if _, err := newClient(t, regs.Private.URL(repo), Options{Insecure: true, Credentials: config(ociregistry.Password)}).Resolve(Reference{Tag: "v1"}); err != nil {
		t.Errorf("resolve with the credentials: %v", err)
	}
}

func TestTLSRegistry(t *testing.T) {
	regs := ociregistry.Shared(t)
	repo := "sources/tls"
	regs.Open.PushFiles(t, repo, "v1", map[string]string{"a": "a"})
	url := regs.TLS.URL(repo)
	if _, err := newClient(t, url, Options{}).Resolve(Reference{Tag: "v1"}); err == nil {
		t.Error("resolve without the registry's CA succeeded")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(regs.TLSCA) {
		t.Fatal("CA does not parse")
	}
	if _, err := newClient(t, url, Options{TLS: &tls.Config{RootCAs: pool}}).Resolve(Reference{Tag: "v1"}); err != nil {
		t.Errorf("resolve with the CA: %v", err)
	}
	if _, err := newClient(t, url, Options{Insecure: true}).Resolve(Reference{Tag: "v1"}); err != nil {
		t.Errorf("insecure resolve over TLS: %v", err)
	}
}

func TestNewClientRefusesInvalidURLs(t *testing.T) {
	for _, u := range []string{"https://ghcr.io/org/app", "oci://ghcr.io", "oci://ghcr.io/org/app:v1"} {
		if _, err := NewClient(t.Context(), u, Options{}); !errors.Is(err, ErrInvalidURL) {
			t.Errorf("%s: error %v, want ErrInvalidURL", u, err)
		}
	}
}
