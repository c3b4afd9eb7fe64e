// Package githubserver is a GitHub (Enterprise Server) stand-in on
// loopback over TLS for tests of GitHub App authentication. Its API under
// /api/v3 finds one app installation by organization or user and mints
// installation tokens for it to requests carrying a JWT that the app's
// key signed; optionally it serves a Git backend only to those tokens,
// as GitHub serves repositories to x-access-token basic auth.
package githubserver

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v4"
)

const (
	// AccessTokenUser is the basic-auth user name that goes with an
	// installation token.
	AccessTokenUser = "x-access-token"
	// tokenLifetime is how long a minted token is valid, an hour as on GitHub.
	tokenLifetime = time.Hour
	// maxJWTLifetime is the longest exp - iat GitHub accepts.
	maxJWTLifetime = 10 * time.Minute
)

// undecodable is GitHub's message (401) for a JWT that is not the app's:
// malformed, not RS256 or signed by another key.
const undecodable = "A JSON web token could not be decoded"

// Options describe the app and its installation.
type Options struct {
	// AppID is the app's ID, the JWT issuer the server accepts.
	AppID int64
	// InstallationID is the one installation of the app.
	InstallationID int64
	// Orgs and Users are the owners of the installation, looked up under
	// orgs/{owner}/installation and users/{owner}/installation.
	Orgs, Users []string
	// Git, when set, serves every path outside the API routes, and only to
	// basic auth AccessTokenUser:<a token the server minted, not expired>.
	Git http.Handler
}

// Server is one GitHub stand-in, closed when its test ends.
type Server struct {
	o   Options
	srv *httptest.Server
	key *rsa.PrivateKey

	mu sync.Mutex
	// tokens are the minted tokens and when they expire.
	tokens    map[string]time.Time
	exchanges int
}

// Start generates the app's RSA key and serves the API (and Options.Git)
// on 127.0.0.1 over TLS with httptest's certificate (see CA).
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{o: o, key: key, tokens: map[string]time.Time{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v3/app/installations/{id}/access_tokens", s.accessToken)
	mux.HandleFunc("GET /api/v3/orgs/{owner}/installation", s.installation(o.Orgs))
	mux.HandleFunc("GET /api/v3/users/{owner}/installation", s.installation(o.Users))
	if o.Git != nil {
		mux.HandleFunc("/", s.git)
	}
	s.srv = httptest.NewUnstartedServer(mux)
	// Clients that do not trust the certificate, or that a proxy refuses,
	// end their handshakes early: not worth a log line.
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	return s
}

// URL is the server's base URL, https://127.0.0.1:<port>; Options.Git
// serves the paths under it.
func (s *Server) URL() string { return s.srv.URL }

// APIURL is the API's base URL, a Secret's githubAppBaseURL.
func (s *Server) APIURL() string { return s.srv.URL + "/api/v3" }

// CA is the PEM certificate the server presents, a Secret's ca.crt.
func (s *Server) CA() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.srv.Certificate().Raw})
}

// Key is the app's private key.
func (s *Server) Key() *rsa.PrivateKey { return s.key }

// KeyPEM is the app's private key as EncodeKey writes it.
func (s *Server) KeyPEM() []byte { return EncodeKey(s.key) }

// EncodeKey is key as PKCS#1 PEM, as GitHub hands app keys out.
func EncodeKey(key *rsa.PrivateKey) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
}

// Exchanges is how many tokens the server has minted.
func (s *Server) Exchanges() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exchanges
}

// Minted tells whether the server minted token and it has not expired.
func (s *Server) Minted(token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.tokens[token]
	return ok && time.Now().Before(exp)
}

// refuseJWT checks the app JWT of r as GitHub does: RS256 signed by the
// app's key, issued by the app, current, and living at most ten minutes.
// It returns the message of the 401 answer, "" for a good JWT.
func (s *Server) refuseJWT(r *http.Request) string {
	raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return undecodable
	}
	var claims jwt.RegisteredClaims
	_, err := jwt.ParseWithClaims(raw, &claims, func(*jwt.Token) (any, error) { return &s.key.PublicKey, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodRS256.Alg()}))
	switch {
	case errors.Is(err, jwt.ErrTokenExpired) || errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "JWT not current: " + err.Error()
	case err != nil:
		return undecodable
	case claims.Issuer != strconv.FormatInt(s.o.AppID, 10):
		return fmt.Sprintf("JWT issuer %q is not app %d", claims.Issuer, s.o.AppID)
	// The library checks iat and exp only when they are there.
	case claims.IssuedAt == nil || claims.ExpiresAt == nil:
		return "JWT without iat or exp"
	case claims.ExpiresAt.Sub(claims.IssuedAt.Time) > maxJWTLifetime:
		return fmt.Sprintf("JWT lives %s, more than %s", claims.ExpiresAt.Sub(claims.IssuedAt.Time), maxJWTLifetime)
	}
	return ""
}

// accessToken mints the token "ghs_<n>" for the nth exchange, so tests
// can tell a fresh token from a cached one.
func (s *Server) accessToken(w http.ResponseWriter, r *http.Request) {
	if msg := s.refuseJWT(r); msg != "" {
		answer(w, http.StatusUnauthorized, map[string]any{"message": msg})
		return
	}
	if r.PathValue("id") != strconv.FormatInt(s.o.InstallationID, 10) {
		answer(w, http.StatusNotFound, map[string]any{"message": "Not Found"})
		return
	}
	expires := time.Now().Add(tokenLifetime)
	s.mu.Lock()
	s.exchanges++
	token := fmt.Sprintf("ghs_%d", s.exchanges)
	s.tokens[token] = expires
	s.mu.Unlock()
	answer(w, http.StatusCreated, map[string]any{"token": token, "expires_at": expires.UTC().Format(time.RFC3339)})
}

// installation answers the installation's ID for the owners given.
func (s *Server) installation(owners []string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if msg := s.refuseJWT(r); msg != "" {
			answer(w, http.StatusUnauthorized, map[string]any{"message": msg})
			return
		}
		if !slices.Contains(owners, r.PathValue("owner")) {
			answer(w, http.StatusNotFound, map[string]any{"message": "Not Found"})
			return
		}
		answer(w, http.StatusOK, map[string]any{"id": s.o.InstallationID})
	}
}

func (s *Server) git(w http.ResponseWriter, r *http.Request) {
	if user, pass, ok := r.BasicAuth(); !ok || user != AccessTokenUser || !s.Minted(pass) {
		w.Header().Set("WWW-Authenticate", `Basic realm="github"`)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	s.o.Git.ServeHTTP(w, r)
}

func answer(w http.ResponseWriter, code int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}
