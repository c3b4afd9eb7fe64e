package git

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"net/url"
	"strings"
	"testing"

	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
	gossh "golang.org/x/crypto/ssh"
)

func TestGitCommitRevision(t *testing.T) {
	const sha = "0123456789abcdef0123456789abcdef01234567"
	tests := []struct {
		ref  string
		want string
	}{
		{"main", "main@sha1:" + sha},
		{"v1.0.0", "v1.0.0@sha1:" + sha},
		{"refs/pull/1/head", "refs/pull/1/head@sha1:" + sha},
		{"", "sha1:" + sha},
	}
	for _, tt := range tests {
		if got := (&Commit{Hash: sha, Reference: tt.ref}).Revision(); got != tt.want {
			t.Errorf("Revision() with reference %q = %q, want %q", tt.ref, got, tt.want)
		}
	}
	c := &Commit{Message: "  first line that is rather long and goes on and on and on\n\nbody"}
	if got := c.ShortMessage(); got != "first line that is rather long and goes on and ..." {
		t.Errorf("ShortMessage() = %q", got)
	}
}

func TestParseGitURL(t *testing.T) {
	for raw, ok := range map[string]bool{
		"https://example.com/org/repo.git": true,
		"http://127.0.0.1:8080/repo.git":   true,
		"ssh://git@example.com/repo.git":   true,
		"ftp://example.com/repo.git":       false,
		"git@example.com:org/repo.git":     false,
		"https:///repo.git":                false,
		"http://[::1/repo.git":             false,
		"":                                 false,
	} {
		if _, err := ParseURL(raw); (err == nil) != ok || (err != nil && !errors.Is(err, ErrInvalidURL)) {
			t.Errorf("ParseURL(%q) error %v, want ok=%v", raw, err, ok)
		}
	}
}

func TestCheckoutRejectsInvalidRefsBeforeFetching(t *testing.T) {
	// Nothing listens on port 1: an attempted fetch would fail differently.
	for name, ref := range map[string]Reference{
		"short commit":  {Commit: "abc"},
		"bad semver":    {SemVer: "not a range"},
		"relative name": {Name: "heads/main"},
	} {
		_, err := Checkout(t.Context(), t.TempDir(), CheckoutOptions{URL: "http://127.0.0.1:1/repo.git", Ref: ref})
		if !errors.Is(err, ErrInvalidReference) {
			t.Errorf("%s: error %v, want ErrInvalidReference", name, err)
		}
	}
}

func TestGitAuthFromSecret(t *testing.T) {
	https, _ := url.Parse("https://example.com/repo.git")
	withUser, _ := url.Parse("https://urluser:urlpass@example.com/repo.git")
	sshURL, _ := url.Parse("ssh://deploy@example.com/repo.git")

	_, key, _ := ed25519.GenerateKey(rand.Reader)
	block, err := gossh.MarshalPrivateKey(key, "")
	if err != nil {
		t.Fatal(err)
	}
	identity := pem.EncodeToMemory(block)
	encBlock, err := gossh.MarshalPrivateKeyWithPassphrase(key, "", []byte("pass"))
	if err != nil {
		t.Fatal(err)
	}
	encrypted := pem.EncodeToMemory(encBlock)
	signer, _ := gossh.NewSignerFromKey(key)
	knownHosts := []byte("example.com " + strings.TrimSpace(string(gossh.MarshalAuthorizedKey(signer.PublicKey()))) + "\n")

	tests := []struct {
		name    string
		u       *url.URL
		data    map[string][]byte
		check   func(t *testing.T, a *Auth)
		wantErr string
	}{
		{name: "anonymous", u: https, check: func(t *testing.T, a *Auth) {
			if a.method != nil {
				t.Errorf("method %T, want none", a.method)
			}
		}},
		{name: "basic", u: https, data: map[string][]byte{"username": []byte("u"), "password": []byte("p"), "ca.crt": []byte("CA")},
			check: func(t *testing.T, a *Auth) {
				b, ok := a.method.(*githttp.BasicAuth)
				if !ok || b.Username != "u" || b.Password != "p" || string(a.caBundle) != "CA" {
					t.Errorf("auth %#v, ca %q", a.method, a.caBundle)
				}
			}},
		{name: "credentials from the URL", u: withUser, check: func(t *testing.T, a *Auth) {
			if b, ok := a.method.(*githttp.BasicAuth); !ok || b.Username != "urluser" || b.Password != "urlpass" {
				t.Errorf("auth %#v", a.method)
			}
		}},
		{name: "bearer", u: https, data: map[string][]byte{"bearerToken": []byte("tok")}, check: func(t *testing.T, a *Auth) {
			if b, ok := a.method.(*githttp.TokenAuth); !ok || b.Token != "tok" {
				t.Errorf("auth %#v", a.method)
			}
		}},
		{name: "password without username", u: https, data: map[string][]byte{"password": []byte("p")}, wantErr: "'password' requires 'username'"},
		{name: "ssh", u: sshURL, data: map[string][]byte{"identity": identity, "known_hosts": knownHosts}, check: func(t *testing.T, a *Auth) {
			pk, ok := a.method.(*gitssh.PublicKeys)
			if !ok || pk.User != "deploy" || pk.HostKeyCallback == nil {
				t.Fatalf("auth %#v", a.method)
			}
			if err := pk.HostKeyCallback("example.com:22", &netAddr{}, signer.PublicKey()); err != nil {
				t.Errorf("known host refused: %v", err)
			}
			other, _, _ := ed25519.GenerateKey(rand.Reader)
			otherKey, _ := gossh.NewPublicKey(other)
			if err := pk.HostKeyCallback("example.com:22", &netAddr{}, otherKey); err == nil {
				t.Error("unknown host key accepted")
			}
		}},
		{name: "ssh encrypted key with password", u: sshURL, data: map[string][]byte{"identity": encrypted, "password": []byte("pass"), "known_hosts": knownHosts}},
		{name: "ssh encrypted key without password", u: sshURL, data: map[string][]byte{"identity": encrypted, "known_hosts": knownHosts}, wantErr: "encrypted but no 'password'"},
		{name: "ssh without identity", u: sshURL, data: map[string][]byte{"known_hosts": knownHosts}, wantErr: "'identity' is required"},
		{name: "ssh without known_hosts", u: sshURL, data: map[string][]byte{"identity": identity}, wantErr: "'known_hosts' is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := AuthFromSecret(tt.u, tt.data)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrInvalidAuth) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want ErrInvalidAuth mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, a)
			}
		})
	}
}

// A provider's token replaces the secret's (and the URL's) HTTP
// credentials but not its CA; SSH keeps its keys.
func TestGitAuthWithBearerToken(t *testing.T) {
	withUser, _ := url.Parse("https://urluser:urlpass@example.com/repo.git")
	basic, err := AuthFromSecret(withUser, map[string][]byte{"username": []byte("u"), "password": []byte("p"), "ca.crt": []byte("CA")})
	if err != nil {
		t.Fatal(err)
	}
	a := basic.WithBearerToken("entra-token")
	if tok, ok := a.method.(*githttp.TokenAuth); !ok || tok.Token != "entra-token" || string(a.caBundle) != "CA" {
		t.Errorf("auth %#v, ca %q", a.method, a.caBundle)
	}
	if _, ok := basic.method.(*githttp.BasicAuth); !ok {
		t.Errorf("the secret's auth changed to %#v", basic.method)
	}
	anonymous, _ := url.Parse("https://example.com/repo.git")
	none, err := AuthFromSecret(anonymous, nil)
	if err != nil {
		t.Fatal(err)
	}
	if tok, ok := none.WithBearerToken("entra-token").method.(*githttp.TokenAuth); !ok || tok.Token != "entra-token" {
		t.Errorf("auth without a secret: %#v", none.WithBearerToken("entra-token").method)
	}
	ssh := &Auth{method: &gitssh.PublicKeys{User: "git"}}
	if got := ssh.WithBearerToken("entra-token"); got != ssh {
		t.Errorf("ssh auth replaced by %#v", got.method)
	}
}

type netAddr struct{}

func (netAddr) Network() string { return "tcp" }
func (netAddr) String() string  { return "192.0.2.1:22" }
