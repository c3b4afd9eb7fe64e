package reconcile

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
)

// The GitHub App the test GitHub knows.
const (
	ghAppID          = 4242
	ghInstallationID = 777
	ghOwner          = "sourceraft-org"
)

// testGitHub is a GitHub Enterprise Server on loopback over TLS: its API
// under /api/v3 mints installation tokens for the app whose key it
// knows, and it serves the git server's repositories over smart HTTP
// only to those tokens (basic auth as x-access-token).
type testGitHub struct {
	srv *httptest.Server
	key *rsa.PrivateKey

	mu        sync.Mutex
	tokens    map[string]bool
	exchanges int
}

func startGitHub(t *testing.T) *testGitHub {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	g := &testGitHub{key: key, tokens: map[string]bool{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v3/app/installations/{id}/access_tokens", g.accessToken)
	mux.HandleFunc("GET /api/v3/orgs/{owner}/installation", g.installation)
	mux.HandleFunc("/", g.git)
	g.srv = httptest.NewUnstartedServer(mux)
	// Clients refused by the proxy close their handshakes early.
	g.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	g.srv.StartTLS()
	t.Cleanup(g.srv.Close)
	return g
}

// APIURL is the githubAppBaseURL of this server.
func (g *testGitHub) APIURL() string { return g.srv.URL + "/api/v3" }

// CA is the PEM certificate the server presents.
func (g *testGitHub) CA() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: g.srv.Certificate().Raw})
}

func (g *testGitHub) exchanged() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.exchanges
}

// checkJWT verifies the app JWT of r: RS256 signed with the app's key,
// issued by the app ID, current.
func (g *testGitHub) checkJWT(r *http.Request) error {
	raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return fmt.Errorf("no bearer JWT")
	}
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return fmt.Errorf("JWT has %d parts", len(parts))
	}
	var header struct{ Alg string }
	var claims struct {
		Iss      string
		Iat, Exp int64
	}
	for i, v := range []any{&header, &claims} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			return fmt.Errorf("JWT part %d: %w", i, err)
		}
		if err := json.Unmarshal(b, v); err != nil {
			return fmt.Errorf("JWT part %d: %w", i, err)
		}
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return fmt.Errorf("JWT signature: %w", err)
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	now := time.Now().Unix()
	switch {
	case header.Alg != "RS256":
		return fmt.Errorf("JWT alg %q, want RS256", header.Alg)
	case rsa.VerifyPKCS1v15(&g.key.PublicKey, crypto.SHA256, digest[:], sig) != nil:
		return fmt.Errorf("A JSON web token could not be decoded")
	case claims.Iss != strconv.Itoa(ghAppID):
		return fmt.Errorf("JWT issuer %q is not the app", claims.Iss)
	case claims.Iat > now+1 || claims.Exp <= now || claims.Exp-claims.Iat > 600:
		return fmt.Errorf("JWT iat %d exp %d not current at %d", claims.Iat, claims.Exp, now)
	}
	return nil
}

func (g *testGitHub) apiError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"message": err.Error()})
}

func (g *testGitHub) accessToken(w http.ResponseWriter, r *http.Request) {
	if err := g.checkJWT(r); err != nil {
		g.apiError(w, http.StatusUnauthorized, err)
		return
	}
	if r.PathValue("id") != strconv.Itoa(ghInstallationID) {
		g.apiError(w, http.StatusNotFound, fmt.Errorf("Not Found"))
		return
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	token := "ghs_" + hex.EncodeToString(b)
	g.mu.Lock()
	g.tokens[token] = true
	g.exchanges++
	g.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(map[string]any{"token": token, "expires_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)})
}

func (g *testGitHub) installation(w http.ResponseWriter, r *http.Request) {
	if err := g.checkJWT(r); err != nil {
		g.apiError(w, http.StatusUnauthorized, err)
		return
	}
	if r.PathValue("owner") != ghOwner {
		g.apiError(w, http.StatusNotFound, fmt.Errorf("Not Found"))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"id": ghInstallationID})
}

func (g *testGitHub) git(w http.ResponseWriter, r *http.Request) {
	user, pass, ok := r.BasicAuth()
	g.mu.Lock()
	valid := ok && user == "x-access-token" && g.tokens[pass]
	g.mu.Unlock()
	if !valid {
		w.Header().Set("WWW-Authenticate", `Basic realm="github"`)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	gitSrv.backend.ServeHTTP(w, r)
}

// pemKey is key as PKCS#1 PEM, as GitHub hands app keys out.
func pemKey(key *rsa.PrivateKey) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}))
}

func TestGitHubApp(t *testing.T) {
	ns := newNamespace(t)
	gh := startGitHub(t)
	repo := gitSrv.newRepo(t, "github", "app-"+ns)
	sha := repo.commit("via app", map[string]string{"app.yaml": "github app"})
	url := gh.srv.URL + "/github/app-" + ns + ".git"
	otherKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	appSecret := func(name string, key *rsa.PrivateKey, extra map[string]string) {
		data := map[string]string{
			"githubAppID":      strconv.Itoa(ghAppID),
			"githubAppBaseURL": gh.APIURL(),
			"ca.crt":           string(gh.CA()),
		}
		if key != nil {
			data["githubAppPrivateKey"] = pemKey(key)
		}
		for k, v := range extra {
			data[k] = v
		}
		bucketSecret(t, ns, name, data)
	}
	byID := map[string]string{"githubAppInstallationID": strconv.Itoa(ghInstallationID)}
	appSecret("app", gh.key, byID)
	appSecret("app-owner", gh.key, map[string]string{"githubAppInstallationOwner": ghOwner})
	appSecret("wrong-key", otherKey, byID)
	appSecret("no-key", nil, byID)
	appSecret("both", gh.key, map[string]string{"githubAppInstallationID": strconv.Itoa(ghInstallationID), "githubAppInstallationOwner": ghOwner})
	p, refusing := startProxy(t, proxyUser, proxyPass), startProxy(t, proxyUser, proxyPass)
	proxySecrets(t, ns, p, refusing)

	github := func(secret string) func(*sourcev1.GitRepository) {
		return func(o *sourcev1.GitRepository) {
			o.Spec.Provider = sourcev1.GitProviderGitHub
			if secret != "" {
				o.Spec.SecretRef = &meta.LocalObjectReference{Name: secret}
			}
		}
	}
	// First, before any token is cached: a proxy refusing the
	// credentials fails the token exchange, which must go through it.
	newGitRepository(t, ns, "proxy-refuses", url, func(o *sourcev1.GitRepository) {
		github("app")(o)
		o.Spec.ProxySecretRef = proxyRef("wrong")
	})
	t.Run("token exchange goes through the proxy", func(t *testing.T) {
		o := waitFailed[*sourcev1.GitRepository](t, ns, "proxy-refuses", sourcev1.FetchFailedCondition, sourcev1.AuthenticationFailedReason)
		msg := conditionMessage(o, sourcev1.FetchFailedCondition)
		// Flux's text: go-github's error for the exchange request.
		if !strings.HasPrefix(msg, "failed to configure authentication options: Post ") ||
			!strings.Contains(msg, "/app/installations/"+strconv.Itoa(ghInstallationID)+"/access_tokens") || !names407(msg) {
			t.Errorf("FetchFailed message %q", msg)
		}
		if host := hostOf(t, gh.srv.URL); refusing.refusedTo(host) == 0 || refusing.carriedTo(host) != 0 || gh.exchanged() != 0 {
			t.Errorf("proxy refused %d and carried %d requests to %s, %d tokens minted",
				refusing.refusedTo(host), refusing.carriedTo(host), host, gh.exchanged())
		}
		if o.Status.Artifact != nil {
			t.Errorf("artifact %v", o.Status.Artifact)
		}
	})
	newGitRepository(t, ns, "good", url, github("app"))

	t.Run("installation token fetches the repository", func(t *testing.T) {
		o := waitReady[*sourcev1.GitRepository](t, ns, "good", "master@sha1:"+sha)
		if files := untar(t, download(t, o.Status.Artifact)); files["app.yaml"] != "github app" {
			t.Errorf("artifact files %v", fileNames(files))
		}
		if n := gh.exchanged(); n != 1 {
			t.Errorf("%d token exchanges, want 1", n)
		}
	})
	t.Run("token is cached across reconciles", func(t *testing.T) {
		sha2 := repo.commit("second", map[string]string{"app.yaml": "second"})
		requestReconcileOf[*sourcev1.GitRepository](t, ns, "good")
		waitReady[*sourcev1.GitRepository](t, ns, "good", "master@sha1:"+sha2)
		if n := gh.exchanged(); n != 1 {
			t.Errorf("%d token exchanges after a second reconcile, want 1 (the cached token)", n)
		}
	})

	newGitRepository(t, ns, "owner", url, github("app-owner"))
	newGitRepository(t, ns, "through-proxy", url, func(o *sourcev1.GitRepository) {
		github("app")(o)
		o.Spec.ProxySecretRef = proxyRef("good")
	})
	newGitRepository(t, ns, "wrong-key", url, github("wrong-key"))
	newGitRepository(t, ns, "no-secret", url, github(""))
	newGitRepository(t, ns, "no-key", url, github("no-key"))
	newGitRepository(t, ns, "both", url, github("both"))
	newGitRepository(t, ns, "generic-with-app", url, func(o *sourcev1.GitRepository) {
		o.Spec.SecretRef = &meta.LocalObjectReference{Name: "app"}
	})

	t.Run("installation looked up by owner", func(t *testing.T) {
		o := waitReady[*sourcev1.GitRepository](t, ns, "owner", "")
		if !strings.HasPrefix(o.Status.Artifact.Revision, "master@sha1:") {
			t.Errorf("revision %q", o.Status.Artifact.Revision)
		}
	})
	t.Run("fetch goes through the proxy", func(t *testing.T) {
		waitReady[*sourcev1.GitRepository](t, ns, "through-proxy", "")
		// The token is cached by now: what the proxy carried is the fetch.
		if host := hostOf(t, gh.srv.URL); p.carriedTo(host) == 0 {
			t.Fatalf("the proxy carried nothing to %s; carried %s", host, p.hosts())
		}
	})
	t.Run("wrong private key", func(t *testing.T) {
		o := waitFailed[*sourcev1.GitRepository](t, ns, "wrong-key", sourcev1.FetchFailedCondition, sourcev1.AuthenticationFailedReason)
		msg := conditionMessage(o, sourcev1.FetchFailedCondition)
		if !strings.HasPrefix(msg, "failed to configure authentication options: ") || !strings.Contains(msg, "401") ||
			!strings.Contains(msg, "A JSON web token could not be decoded") {
			t.Errorf("FetchFailed message %q", msg)
		}
		if o.Status.Artifact != nil {
			t.Errorf("artifact %v stored with a refused app", o.Status.Artifact)
		}
		eventSink.await(t, ns, "wrong-key", sourcev1.AuthenticationFailedReason, 10*time.Second)
	})
	const noAppData = "secretRef with github app data must be specified when provider is set to github"
	for _, tt := range []struct {
		name, reason, message string
		stalled               bool
	}{
		{"no-secret", sourcev1.InvalidProviderConfigurationReason, noAppData, true},
		{"no-key", sourcev1.InvalidProviderConfigurationReason, noAppData, false},
		{"both", sourcev1.AuthenticationFailedReason, "failed to configure authentication options: only one of app installation owner or ID must be provided to use github app authentication", false},
		{"generic-with-app", sourcev1.InvalidProviderConfigurationReason, "secretRef '" + ns + "/app' has github app data but provider is not set to github", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := waitFailed[*sourcev1.GitRepository](t, ns, tt.name, sourcev1.FetchFailedCondition, tt.reason)
			if msg := conditionMessage(o, sourcev1.FetchFailedCondition); msg != tt.message {
				t.Errorf("FetchFailed message %q, want %q", msg, tt.message)
			}
			if conditions.IsTrue(o, meta.StalledCondition) != tt.stalled || o.Status.Artifact != nil {
				t.Errorf("stalled %v (want %v), artifact %v", conditions.IsTrue(o, meta.StalledCondition), tt.stalled, o.Status.Artifact)
			}
		})
	}
}
