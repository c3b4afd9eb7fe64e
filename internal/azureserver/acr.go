package azureserver

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v4"
)

const (
	// ScopeACR is the scope of access tokens for Azure Container Registry
	// in Azure's public cloud (its ACR audience and /.default), what
	// fluxcd/pkg/auth asks Entra for before an exchange.
	ScopeACR = "https://containerregistry.azure.net/.default"
	// ACRUser is the user name of a registry's basic auth with a refresh
	// token as the password.
	ACRUser = "00000000-0000-0000-0000-000000000000"
	// ExchangePattern is where a registry serves its token exchange.
	ExchangePattern = "POST /oauth2/exchange"

	// refreshLifetime is how long an ACR refresh token is valid.
	refreshLifetime = 3 * time.Hour
)

// ACR is a container registry's token exchange (ExchangePattern on the
// registry's host): an Entra access token of this server's for ACR, of an
// app with pull access to the registry, for the registry's refresh token.
// The stand-in issues one refresh token to every puller, RefreshToken: a
// registry that lets ACRUser in with it as the password (htpasswd) lets
// in only those the exchange did.
type ACR struct {
	// RefreshToken is the token the exchange answers, a JWT the server
	// signs, as ACR's are.
	RefreshToken string

	s        *Server
	registry string
	mu       sync.Mutex
	// pullers are the apps with pull access, tenant/client; exchanged
	// counts their exchanges.
	pullers   map[string]bool
	exchanged map[string]int
}

// NewACR is the token exchange of the registry at host registry (its
// service name).
func (s *Server) NewACR(registry string) (*ACR, error) {
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	now := time.Now()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.RegisteredClaims{
		Issuer:    "Azure Container Registry",
		Audience:  jwt.ClaimStrings{registry},
		IssuedAt:  jwt.NewNumericDate(now),
		NotBefore: jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(refreshLifetime)),
		ID:        hex.EncodeToString(id),
	}).SignedString(s.key)
	if err != nil {
		return nil, fmt.Errorf("refresh token for %s: %w", registry, err)
	}
	return &ACR{RefreshToken: tok, s: s, registry: registry, pullers: map[string]bool{}, exchanged: map[string]int{}}, nil
}

// Grant gives the app clientID of tenantID pull access (the AcrPull
// role) to the registry.
func (a *ACR) Grant(tenantID, clientID string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pullers[tenantID+"/"+clientID] = true
}

// Exchanged is how many refresh tokens the app clientID of tenantID got.
func (a *ACR) Exchanged(tenantID, clientID string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.exchanged[tenantID+"/"+clientID]
}

func (a *ACR) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		acrRefuse(w, http.StatusBadRequest, "BAD_REQUEST", err.Error())
		return
	}
	if g := r.PostForm.Get("grant_type"); g != "access_token" {
		acrRefuse(w, http.StatusBadRequest, "UNSUPPORTED", fmt.Sprintf("grant type '%s' is not supported", g))
		return
	}
	if svc := r.PostForm.Get("service"); svc != a.registry {
		acrRefuse(w, http.StatusBadRequest, "BAD_REQUEST", fmt.Sprintf("service '%s' is not this registry's, %s", svc, a.registry))
		return
	}
	claims, err := a.s.Verify(r.PostForm.Get("access_token"), ScopeACR)
	if err != nil {
		acrRefuse(w, http.StatusUnauthorized, "UNAUTHORIZED", "the access token is not valid: "+err.Error())
		return
	}
	app := claims.TenantID + "/" + claims.AppID
	a.mu.Lock()
	puller := a.pullers[app]
	if puller {
		a.exchanged[app]++
	}
	a.mu.Unlock()
	if !puller {
		acrRefuse(w, http.StatusUnauthorized, "UNAUTHORIZED",
			fmt.Sprintf("the app '%s' of tenant '%s' has no access to registry %s", claims.AppID, claims.TenantID, a.registry))
		return
	}
	answer(w, http.StatusOK, map[string]string{"refresh_token": a.RefreshToken})
}

// acrRefuse answers an error as the registry API does.
func acrRefuse(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
}
