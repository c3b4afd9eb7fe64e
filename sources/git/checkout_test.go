package git

import (
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sourceraft/sourceraft/internal/gitserver"
)

// startServer serves repositories with git http-backend on loopback;
// everything under /private/ asks for basic auth flux:pass.
func startServer(t *testing.T) *gitserver.Server {
	t.Helper()
	s, err := gitserver.Start(t.TempDir(), func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/private/") {
				want := "Basic " + base64.StdEncoding.EncodeToString([]byte("flux:pass"))
				if r.Header.Get("Authorization") != want {
					w.Header().Set("WWW-Authenticate", `Basic realm="git"`)
					http.Error(w, "unauthorized", http.StatusUnauthorized)
					return
				}
			}
			h.ServeHTTP(w, r)
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newRepo(t *testing.T, s *gitserver.Server, name string) *gitserver.Repo {
	t.Helper()
	r, err := s.NewRepo(name, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// mustOf is a helper that fails t on the error of a gitserver call.
func mustOf(t *testing.T) func(string, error) string {
	return func(out string, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
}

func readFile(t *testing.T, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestCheckoutReferences(t *testing.T) {
	s := startServer(t)
	r := newRepo(t, s, "public/app")
	must := mustOf(t)
	first := must(r.Commit("first", map[string]string{"app.yaml": "v1", "sub/a.yaml": "a"}))
	must(r.Git("tag", "v1.0.0"))
	must(r.Git("tag", "-a", "-m", "annotated", "v1.1.0"))
	must(r.Git("push", "-q", "origin", "--tags"))
	second := must(r.Commit("second line one\n\nbody", map[string]string{"app.yaml": "v2"}))
	must(r.Git("checkout", "-q", "-b", "feature"))
	feature := must(r.Commit("feature", map[string]string{"app.yaml": "feature"}))

	tests := []struct {
		name     string
		ref      Reference
		revision string
		content  string
	}{
		{"default branch", Reference{}, "master@sha1:" + second, "v2"},
		{"branch", Reference{Branch: "feature"}, "feature@sha1:" + feature, "feature"},
		{"tag", Reference{Tag: "v1.0.0"}, "v1.0.0@sha1:" + first, "v1"},
		{"semver picks the highest, through an annotated tag", Reference{SemVer: ">=1.0.0"}, "v1.1.0@sha1:" + first, "v1"},
		{"commit on a branch", Reference{Branch: "master", Commit: first}, "master@sha1:" + first, "v1"},
		{"commit anywhere", Reference{Commit: feature}, "sha1:" + feature, "feature"},
		{"name", Reference{Name: "refs/heads/feature"}, "refs/heads/feature@sha1:" + feature, "feature"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			c, err := Checkout(t.Context(), dir, CheckoutOptions{URL: r.URL, Ref: tt.ref})
			if err != nil {
				t.Fatal(err)
			}
			if c.Revision() != tt.revision {
				t.Errorf("revision %s, want %s", c.Revision(), tt.revision)
			}
			if got := readFile(t, dir, "app.yaml"); got != tt.content {
				t.Errorf("app.yaml %q, want %q", got, tt.content)
			}
		})
	}

	dir := t.TempDir()
	c, err := Checkout(t.Context(), dir, CheckoutOptions{URL: r.URL, Ref: Reference{Branch: "master"}, SparseCheckout: []string{"./sub/"}})
	if err != nil {
		t.Fatal(err)
	}
	if c.ShortMessage() != "second line one" {
		t.Errorf("short message %q", c.ShortMessage())
	}
	if readFile(t, dir, "sub/a.yaml") != "a" {
		t.Error("sparse directory not checked out")
	}
	if _, err := os.Stat(filepath.Join(dir, "app.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("file outside the sparse directory checked out: %v", err)
	}
	if _, err := Checkout(t.Context(), t.TempDir(), CheckoutOptions{URL: r.URL, SparseCheckout: []string{"missing"}}); err == nil {
		t.Error("sparse checkout of a missing directory succeeded")
	}

	for name, ref := range map[string]Reference{
		"missing branch":   {Branch: "nope"},
		"no tag in range":  {SemVer: ">=9.0.0"},
		"commit not found": {Branch: "master", Commit: feature},
	} {
		if _, err := Checkout(t.Context(), t.TempDir(), CheckoutOptions{URL: r.URL, Ref: ref}); err == nil || errors.Is(err, ErrInvalidReference) {
			t.Errorf("%s: error %v, want a fetch failure", name, err)
		}
	}
}

func TestCheckoutEmptyRepository(t *testing.T) {
	s := startServer(t)
	r := newRepo(t, s, "public/empty")
	for name, ref := range map[string]Reference{"branch": {}, "semver": {SemVer: "*"}} {
		_, err := Checkout(t.Context(), t.TempDir(), CheckoutOptions{URL: r.URL, Ref: ref})
		if !errors.Is(err, ErrEmptyRepository) {
			t.Errorf("%s: error %v, want ErrEmptyRepository", name, err)
		}
	}
}

func TestCheckoutBasicAuth(t *testing.T) {
	s := startServer(t)
	r := newRepo(t, s, "private/app")
	must := mustOf(t)
	head := must(r.Commit("first", map[string]string{"app.yaml": "v1"}))
	u, err := ParseURL(r.URL)
	if err != nil {
		t.Fatal(err)
	}

	if _, err := Checkout(t.Context(), t.TempDir(), CheckoutOptions{URL: r.URL}); err == nil {
		t.Fatal("anonymous checkout of a private repository succeeded")
	}
	wrong, err := AuthFromSecret(u, map[string][]byte{"username": []byte("flux"), "password": []byte("wrong")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Checkout(t.Context(), t.TempDir(), CheckoutOptions{URL: r.URL, Auth: wrong}); err == nil {
		t.Fatal("checkout with a wrong password succeeded")
	}
	auth, err := AuthFromSecret(u, map[string][]byte{"username": []byte("flux"), "password": []byte("pass")})
	if err != nil {
		t.Fatal(err)
	}
	c, err := Checkout(t.Context(), t.TempDir(), CheckoutOptions{URL: r.URL, Auth: auth})
	if err != nil {
		t.Fatal(err)
	}
	if c.Hash != head {
		t.Errorf("hash %s, want %s", c.Hash, head)
	}

	withUser := *u
	withUser.User = url.UserPassword("flux", "pass")
	auth, err = AuthFromSecret(&withUser, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Checkout(t.Context(), t.TempDir(), CheckoutOptions{URL: r.URL, Auth: auth}); err != nil {
		t.Errorf("checkout with the URL's credentials: %v", err)
	}
}
