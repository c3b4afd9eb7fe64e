package git

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"

	"github.com/fluxcd/pkg/cache"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"

	"github.com/sourceraft/sourceraft/internal/githubserver"
)

func TestGitHubAppFromSecret(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pkcs1 := githubserver.EncodeKey(key)
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8 := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalPKCS8PrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	ecPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER})
	secret := func(kv ...string) map[string][]byte {
		d := map[string][]byte{KeyGitHubAppID: []byte("12"), KeyGitHubAppPrivateKey: pkcs1, KeyGitHubAppInstallationID: []byte("34")}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "" {
				delete(d, kv[i])
				continue
			}
			d[kv[i]] = []byte(kv[i+1])
		}
		return d
	}
	tests := []struct {
		name string
		data map[string][]byte
		err  string
	}{
		{"installation id", secret(), ""},
		{"installation owner", secret(KeyGitHubAppInstallationID, "", KeyGitHubAppInstallationOwner, "org"), ""},
		{"pkcs8 key", secret(KeyGitHubAppPrivateKey, string(pkcs8)), ""},
		{"enterprise base url", secret(KeyGitHubAppBaseURL, "https://ghe.example.com/api/v3/"), ""},
		// Flux's client's messages, word for word.
		{"no app id", secret(KeyGitHubAppID, ""), "app ID must be provided to use github app authentication"},
		{"app id not a number", secret(KeyGitHubAppID, "x12"), "app ID must be provided to use github app authentication"},
		{"neither owner nor id", secret(KeyGitHubAppInstallationID, ""), "app installation owner or ID must be provided to use github app authentication"},
		{"owner and id", secret(KeyGitHubAppInstallationOwner, "org"), "only one of app installation owner or ID must be provided to use github app authentication"},
		{"id not a number", secret(KeyGitHubAppInstallationID, "3x"), "app installation owner or ID must be provided to use github app authentication"},
		{"no key", secret(KeyGitHubAppPrivateKey, ""), "private key must be provided to use github app authentication"},
		{"not PEM", secret(KeyGitHubAppPrivateKey, "not a key"), "could not parse private key: invalid key: Key must be a PEM encoded PKCS1 or PKCS8 key"},
		{"not RSA", secret(KeyGitHubAppPrivateKey, string(ecPEM)), "could not parse private key: key is not a valid RSA private key"},
		{"ca.crt not PEM", secret("ca.crt", "not a certificate"), "failed to parse CA certificate"},
		{"base url not a URL", secret(KeyGitHubAppBaseURL, "https://ghe example.com:x/api/v3"), "invalid API URL: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app, err := GitHubAppFromSecret(tt.data)
			if tt.err != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.err) {
					t.Fatalf("err %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if app.AppID != 12 || (app.InstallationID == 0) == (app.InstallationOwner == "") {
				t.Errorf("app %+v", app)
			}
			if base := string(tt.data[KeyGitHubAppBaseURL]); base == "" && app.APIURL != DefaultGitHubAPIURL ||
				base != "" && app.APIURL != strings.TrimSuffix(base, "/") {
				t.Errorf("API URL %q for githubAppBaseURL %q", app.APIURL, base)
			}
		})
	}
}

func TestGitHubAppTokens(t *testing.T) {
	// Installation 34 of app 12, owned by the user "user" (and no
	// organization).
	gh := githubserver.Start(t, githubserver.Options{AppID: 12, InstallationID: 34, Users: []string{"user"}})
	ca := gh.CA()
	otherKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	app := func(key *rsa.PrivateKey, kv ...string) *GitHubApp {
		t.Helper()
		data := map[string][]byte{
			KeyGitHubAppID:             []byte("12"),
			KeyGitHubAppInstallationID: []byte("34"),
			KeyGitHubAppPrivateKey:     githubserver.EncodeKey(key),
			KeyGitHubAppBaseURL:        []byte(gh.APIURL()),
			"ca.crt":                   ca,
		}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "" {
				delete(data, kv[i])
				continue
			}
			data[kv[i]] = []byte(kv[i+1])
		}
		a, err := GitHubAppFromSecret(data)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	ctx := context.Background()
	password := func(t *testing.T, a *Auth) string {
		t.Helper()
		b, ok := a.method.(*githttp.BasicAuth)
		if !ok || b.Username != GitHubAccessTokenUsername || !bytes.Equal(a.caBundle, ca) {
			t.Fatalf("auth %#v, CA bundle %d bytes", a.method, len(a.caBundle))
		}
		return b.Password
	}
	tc, err := cache.NewTokenCache(10)
	if err != nil {
		t.Fatal(err)
	}
	tokens := GitHubAppTokens{Cache: tc}

	t.Run("installation id, then the cached token", func(t *testing.T) {
		for range 2 {
			a, err := tokens.Auth(ctx, app(gh.Key()), nil)
			if err != nil {
				t.Fatal(err)
			}
			if p := password(t, a); p != "ghs_1" {
				t.Errorf("password %q, want the first token", p)
			}
		}
		if n := gh.Exchanges(); n != 1 {
			t.Errorf("%d exchanges, want 1", n)
		}
	})
	t.Run("owner found as a user", func(t *testing.T) {
		a, err := tokens.Auth(ctx, app(gh.Key(), KeyGitHubAppInstallationID, "", KeyGitHubAppInstallationOwner, "user"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if p := password(t, a); p != "ghs_2" {
			t.Errorf("password %q, want a token of its own (another cache entry)", p)
		}
	})
	for _, tt := range []struct {
		name string
		app  *GitHubApp
		want []string
	}{
		{"unknown owner", app(gh.Key(), KeyGitHubAppInstallationID, "", KeyGitHubAppInstallationOwner, "nobody"), []string{
			"failed to find organization installation: GET " + gh.APIURL() + "/orgs/nobody/installation: 404 Not Found",
			"failed to find user installation: GET " + gh.APIURL() + "/users/nobody/installation: 404 Not Found",
		}},
		{"wrong key", app(otherKey), []string{
			"POST " + gh.APIURL() + "/app/installations/34/access_tokens: 401 A JSON web token could not be decoded",
		}},
		{"unknown installation", app(gh.Key(), KeyGitHubAppInstallationID, "35"), []string{"/app/installations/35/access_tokens: 404 Not Found"}},
		{"CA not trusted", app(gh.Key(), "ca.crt", ""), []string{"certificate signed by unknown authority"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := gh.Exchanges()
			// A cache of its own: the shared one holds the good app's
			// token, which a CA change does not renew (nor does Flux's).
			_, err := GitHubAppTokens{}.Auth(ctx, tt.app, nil)
			for _, w := range tt.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("err %v, want it to contain %q", err, w)
				}
			}
			if n := gh.Exchanges(); n != before {
				t.Errorf("%d tokens minted", n-before)
			}
		})
	}
}
