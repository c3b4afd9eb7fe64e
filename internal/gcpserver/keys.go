package gcpserver

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/golang-jwt/jwt/v4"
)

// TokenURI is Google's OAuth 2.0 token endpoint, where the holder of a
// service account key exchanges a JWT signed with it for the account's
// access token.
const TokenURI = "https://oauth2.googleapis.com/token"

// NewKey creates a key of the service account email (see
// AddServiceAccount) and returns it as the JSON Google hands out.
func (s *Server) NewKey(email string) ([]byte, error) {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	id := make([]byte, 20)
	_, _ = rand.Read(id)
	kid := hex.EncodeToString(id)
	s.mu.Lock()
	a := s.accounts[email]
	if a == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("no service account %s", email)
	}
	if a.keys == nil {
		a.keys = map[string]*rsa.PublicKey{}
	}
	a.keys[kid] = &priv.PublicKey
	s.mu.Unlock()
	return json.Marshal(map[string]string{
		"type":           "service_account",
		"project_id":     s.Project,
		"private_key_id": kid,
		"private_key":    string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email":   email,
		"client_id":      "1" + kid[:20],
		"auth_uri":       "https://accounts.google.com/o/oauth2/auth",
		"token_uri":      TokenURI,
	})
}

// serveToken exchanges a JWT signed with a service account key for the
// account's access token (the jwt-bearer grant): the key must be the
// account's, the JWT addressed to TokenURI, unexpired and asking for a
// scope.
func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	oauthError := func(code int, kind, desc string) {
		writeJSON(w, code, map[string]string{"error": kind, "error_description": desc})
	}
	if err := r.ParseForm(); err != nil {
		oauthError(http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	if g := r.PostForm.Get("grant_type"); g != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
		oauthError(http.StatusBadRequest, "unsupported_grant_type", "Invalid grant_type: "+g)
		return
	}
	var a *account
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(r.PostForm.Get("assertion"), claims, func(tok *jwt.Token) (any, error) {
		kid, _ := tok.Header["kid"].(string)
		iss, _ := claims["iss"].(string)
		s.mu.Lock()
		defer s.mu.Unlock()
		if a = s.accounts[iss]; a == nil || a.keys[kid] == nil {
			return nil, errors.New("unknown key")
		}
		return a.keys[kid], nil
	}, jwt.WithValidMethods([]string{"RS256"}))
	if err != nil {
		oauthError(http.StatusBadRequest, "invalid_grant", "Invalid JWT Signature.")
		return
	}
	if !claims.VerifyAudience(TokenURI, true) {
		oauthError(http.StatusBadRequest, "invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.")
		return
	}
	if scope, _ := claims["scope"].(string); strings.TrimSpace(scope) == "" {
		oauthError(http.StatusBadRequest, "invalid_scope", "Invalid OAuth scope or ID token audience provided.")
		return
	}
	s.mu.Lock()
	token := a.token
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"access_token": token, "expires_in": 3599, "token_type": "Bearer"})
}
