package oci

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	gcrv1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/sourceraft/sourceraft/archive"
	"github.com/sourceraft/sourceraft/internal/ociregistry"
)

func TestParseOCIURL(t *testing.T) {
	tests := []struct {
		url      string
		insecure bool
		repo     string
		scheme   string
		err      string
	}{
		{url: "oci://ghcr.io/org/app", repo: "ghcr.io/org/app", scheme: "https"},
		{url: "oci://127.0.0.1:5000/app", insecure: true, repo: "127.0.0.1:5000/app", scheme: "http"},
		{url: "oci://registry.example.com:5000/a/b/c", repo: "registry.example.com:5000/a/b/c", scheme: "https"},
		{url: "https://ghcr.io/org/app", err: "URL must be in format"},
		{url: "oci://ghcr.io/org/app:v1", err: "URL must not contain a tag; remove ':v1'"},
		{url: "oci://127.0.0.1:5000/app:v1", err: "URL must not contain a tag; remove ':v1'"},
		{url: "oci://ghcr.io/org/app@sha256:" + strings.Repeat("a", 64), err: "must not contain a digest"},
		{url: "oci://ghcr.io", err: "URL must be in format"},
		{url: "oci://", err: "repository"},
		{url: "oci://ghcr.io/Org/App", err: "repository can only contain"},
	}
	for _, tt := range tests {
		repo, err := parseURL(tt.url, tt.insecure)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("parseURL(%q) = %v, %v; want an error with %q", tt.url, repo, err, tt.err)
			}
			continue
		}
		if err != nil || repo.String() != tt.repo || repo.Scheme() != tt.scheme {
			t.Errorf("parseURL(%q) = %q (%s), %v; want %q (%s)", tt.url, repo.String(), repo.Scheme(), err, tt.repo, tt.scheme)
		}
	}
}

func TestOCIRevision(t *testing.T) {
	h := gcrv1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
	if got := (&Resolved{Tag: "v1.0.0", Digest: h.String()}).Revision(); got != "v1.0.0@sha256:"+h.Hex {
		t.Errorf("tag revision %q", got)
	}
	if got := (&Resolved{Digest: h.String()}).Revision(); got != "sha256:"+h.Hex {
		t.Errorf("digest revision %q", got)
	}
}

func TestOCITagSelector(t *testing.T) {
	tags := []string{"latest", "v1.0.0", "1.1.0", "v1.2.0-rc.1", "1.2", "v2.0.0", "main-abc", "1.1.0-beta", "v1.1.0"}
	tests := []struct {
		rng, filter, want, err string
	}{
		{rng: ">=1.0.0 <2.0.0", want: "v1.1.0"}, // 1.1.0 and v1.1.0 tie: the greater string wins
		{rng: "*", want: "v2.0.0"},
		{rng: ">=1.0.0-0 <2.0.0", want: "v1.2.0-rc.1"},
		{rng: ">=1.0.0-0", filter: "-beta$", want: "1.1.0-beta"},
		{rng: "~1.0", want: "v1.0.0"},
		{rng: ">=3.0.0", err: "no match found for semver: >=3.0.0"},
		{rng: "not a range", err: "semver 'not a range' parse error"},
		{rng: "*", filter: "(", err: "semverFilter '('"},
	}
	for _, tt := range tests {
		sel, err := newTagSelector(tt.rng, tt.filter)
		var got string
		if err == nil {
			got, err = sel.latest(tags)
		}
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("range %q filter %q: %q, %v; want error %q", tt.rng, tt.filter, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("range %q filter %q: %q, %v; want %q", tt.rng, tt.filter, got, err, tt.want)
		}
	}
	// A range that cannot parse is a spec error: it stalls.
	if _, err := newTagSelector("not a range", ""); !errors.Is(err, ErrInvalidReference) {
		t.Errorf("invalid range error %v is not ErrInvalidReference", err)
	}
}

func TestParseDockerConfig(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	resolve := func(t *testing.T, kc authn.Keychain, ref string) *authn.AuthConfig {
		t.Helper()
		r, err := name.NewRepository(ref)
		if err != nil {
			t.Fatal(err)
		}
		a, err := kc.Resolve(r)
		if err != nil {
			t.Fatal(err)
		}
		c, err := a.Authorization()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	kc, err := ParseDockerConfig([]byte(`{"auths":{
		"ghcr.io":{"username":"u1","password":"p1"},
		"https://registry.example.com:5000/v1/":{"auth":"`+b64("u2:p:2")+`"},
		"https://index.docker.io/v1/":{"auth":"`+b64("hub:hubpass")+`"}}}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c := resolve(t, kc, "ghcr.io/org/app"); c.Username != "u1" || c.Password != "p1" {
		t.Errorf("ghcr.io: %+v", c)
	}
	if c := resolve(t, kc, "registry.example.com:5000/app"); c.Username != "u2" || c.Password != "p:2" {
		t.Errorf("URL key: %+v", c)
	}
	if c := resolve(t, kc, "library/nginx"); c.Username != "hub" {
		t.Errorf("Docker Hub: %+v", c)
	}
	if c := resolve(t, kc, "quay.io/app"); c.Username != "" || c.Auth != "" {
		t.Errorf("unknown registry should be anonymous: %+v", c)
	}

	legacy, err := ParseDockerConfig(nil, []byte(`{"quay.io":{"auth":"`+b64("q:qp")+`"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if c := resolve(t, legacy, "quay.io/app"); c.Username != "q" || c.Password != "qp" {
		t.Errorf(".dockercfg: %+v", c)
	}

	for data, want := range map[string]string{
		`{"auths":`:                                         "invalid .dockerconfigjson",
		`{"auths":{"ghcr.io":{"auth":"%%%"}}}`:              "invalid auth for 'ghcr.io'",
		`{"auths":{"ghcr.io":{"auth":"` + b64("x") + `"}}}`: "is not 'user:password'",
	} {
		if _, err := ParseDockerConfig([]byte(data), nil); !errors.Is(err, ErrInvalidAuth) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", data, err, want)
		}
	}
	if _, err := ParseDockerConfig(nil, nil); !errors.Is(err, ErrInvalidAuth) {
		t.Errorf("no Docker config: %v", err)
	}
}

// TestExtractOCILayerLimits also pins fluxcd/pkg/tar's size-limit message,
// which extractLayer relies on to report a typed limit error.
func TestExtractLayerLimits(t *testing.T) {
	layer := ociregistry.TarGz(t, map[string]string{"a": strings.Repeat("x", 600), "b": strings.Repeat("x", 600), "c": "0123456789"})
	tests := []struct {
		name  string
		lim   Limits
		limit string
	}{
		{"within limits", Limits{Untar: 2000, Entries: 3}, ""},
		{"unbounded", Limits{}, ""},
		{"size", Limits{Untar: 1000}, archive.LimitSize},
		{"entries", Limits{Entries: 2}, archive.LimitEntries},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := extractLayer(bytes.NewReader(layer), t.TempDir(), tt.lim)
			var le *archive.LimitError
			switch {
			case tt.limit == "" && err != nil:
				t.Fatalf("extract: %v", err)
			case tt.limit != "" && (!errors.As(err, &le) || le.Limit != tt.limit):
				t.Fatalf("extract: %v, want a %s LimitError", err, tt.limit)
			}
		})
	}
	deep := func(depth int) string { return strings.Repeat("d/", depth) + "f" }
	dir := t.TempDir()
	if err := extractLayer(bytes.NewReader(ociregistry.TarGz(t, map[string]string{deep(archive.MaxEntryDepth): "x"})), dir, Limits{}); err != nil {
		t.Fatalf("an entry %d directories deep: %v", archive.MaxEntryDepth, err)
	}
	dir = t.TempDir()
	err := extractLayer(bytes.NewReader(ociregistry.TarGz(t, map[string]string{"a": "x", deep(archive.MaxEntryDepth + 1): "x"})), dir, Limits{})
	var le *archive.LimitError
	if !errors.As(err, &le) || le.Limit != archive.LimitDepth || le.Actual != archive.MaxEntryDepth+1 {
		t.Fatalf("an entry %d directories deep: %v, want a depth LimitError", archive.MaxEntryDepth+1, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "d")); !os.IsNotExist(err) {
		t.Errorf("the refused entry's directories were created: %v", err)
	}
	err = extractLayer(strings.NewReader("not gzip"), t.TempDir(), Limits{})
	if !errors.Is(err, ErrLayer) {
		t.Errorf("a layer that is not tar.gz: %v", err)
	}
}

func TestLimitReader(t *testing.T) {
	data := bytes.Repeat([]byte("y"), 100)
	for _, tt := range []struct {
		max  int64
		fail bool
	}{{-1, false}, {100, false}, {200, false}, {99, true}, {0, true}} {
		lr := &limitReader{r: bytes.NewReader(data), left: tt.max, max: tt.max}
		n, err := io.Copy(io.Discard, lr)
		var le *archive.LimitError
		if tt.fail != errors.As(err, &le) || (!tt.fail && n != 100) {
			t.Errorf("max %d: read %d, %v", tt.max, n, err)
		}
	}
}
