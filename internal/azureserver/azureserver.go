// Package azureserver is a Microsoft Entra ID (Azure AD) stand-in for
// tests of Azure workload identity: what azidentity's client assertion
// credentials (ClientAssertionCredential, WorkloadIdentityCredential) ask
// of login.microsoftonline.com. It serves the tenants' OpenID
// configurations and their v2.0 token endpoints, and there exchanges a
// Kubernetes ServiceAccount token (the client assertion) for an access
// token when, as Entra checks a federated identity credential, the
// assertion is authentic (a TokenReview against the cluster that issued
// it), is meant for Entra (audience api://AzureADTokenExchange) and its
// subject is one the app trusts. The access tokens are JWTs the stand-in
// signs; Verify is how the stand-ins of the resources they are for (Azure
// DevOps, a registry's token exchange) accept them. ACR is such an
// exchange: Azure Container Registry's, for a registry's refresh token.
//
// Serve it over HTTPS under the authority host (cloudnet's Serve); it
// builds its endpoints from the host it was asked on.
package azureserver

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v4"
	authenticationv1 "k8s.io/api/authentication/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

const (
	// Audience is the audience Entra requires of a federated client
	// assertion.
	Audience = "api://AzureADTokenExchange"
	// ScopeDevOps is the scope of access tokens for Azure DevOps (the
	// DevOps resource's app ID and /.default).
	ScopeDevOps = "499b84ac-1321-427f-aa17-267ca6975798/.default"

	// assertionType is the only client_assertion_type Entra accepts.
	assertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	// tokenLifetime is how long an access token is valid, about an hour
	// as Entra's are.
	tokenLifetime = time.Hour
)

// oidcScopes may accompany the resource scope; MSAL adds them to every
// request and Entra ignores them for client credentials.
var oidcScopes = []string{"openid", "offline_access", "profile"}

// Options configure the stand-in.
type Options struct {
	// Kube reviews the client assertions (TokenReview): only the
	// ServiceAccount tokens of that cluster are authentic.
	Kube client.Client
}

// Claims are an issued access token's claims, as Entra's v1 access
// tokens name them.
type Claims struct {
	jwt.RegisteredClaims
	// TenantID is the tenant that issued the token.
	TenantID string `json:"tid"`
	// AppID is the client ID of the app the token was issued to.
	AppID string `json:"appid"`
}

// Server is the stand-in; it is an http.Handler.
type Server struct {
	o   Options
	key *rsa.PrivateKey
	mux *http.ServeMux

	mu sync.Mutex
	// apps are the app registrations of each tenant: client ID → the
	// ServiceAccount subjects its federated identity credentials trust.
	apps map[string]map[string][]string
	// issued counts the access tokens issued per tenant/client.
	issued map[string]int
}

// New generates the signing key of the access tokens.
func New(o Options) (*Server, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("access token key: %w", err)
	}
	s := &Server{o: o, key: key, mux: http.NewServeMux(), apps: map[string]map[string][]string{}, issued: map[string]int{}}
	s.mux.HandleFunc("GET /{tenant}/v2.0/.well-known/openid-configuration", s.openIDConfiguration)
	s.mux.HandleFunc("POST /{tenant}/oauth2/v2.0/token", s.token)
	return s, nil
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Federate registers the app clientID in the tenant tenantID (both made
// when new) with a federated identity credential trusting the tokens of
// the ServiceAccount namespace/name.
func (s *Server) Federate(tenantID, clientID, namespace, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.apps[tenantID] == nil {
		s.apps[tenantID] = map[string][]string{}
	}
	subject := "system:serviceaccount:" + namespace + ":" + name
	s.apps[tenantID][clientID] = append(s.apps[tenantID][clientID], subject)
}

// Issued is how many access tokens the app clientID of tenantID got.
func (s *Server) Issued(tenantID, clientID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issued[tenantID+"/"+clientID]
}

// Verify checks that token is an access token this server issued for
// scope's resource and that it is current, and returns its claims.
func (s *Server) Verify(token, scope string) (*Claims, error) {
	var c Claims
	_, err := jwt.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return &s.key.PublicKey, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodRS256.Alg()}))
	if err != nil {
		return nil, err
	}
	if resource := strings.TrimSuffix(scope, "/.default"); !c.VerifyAudience(resource, true) {
		return nil, fmt.Errorf("access token for %v, not %s", c.Audience, resource)
	}
	return &c, nil
}

// openIDConfiguration answers the tenant's endpoints; MSAL takes the
// token endpoint from it and checks that the issuer is on the authority's
// host.
func (s *Server) openIDConfiguration(w http.ResponseWriter, r *http.Request) {
	tenant := r.PathValue("tenant")
	if !s.tenantExists(tenant) {
		refuse(w, http.StatusBadRequest, "invalid_tenant", 90002, "Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.", tenant)
		return
	}
	base := "https://" + r.Host + "/" + tenant
	answer(w, http.StatusOK, map[string]any{
		"issuer":                                base + "/v2.0",
		"authorization_endpoint":                base + "/oauth2/v2.0/authorize",
		"token_endpoint":                        base + "/oauth2/v2.0/token",
		"jwks_uri":                              "https://" + r.Host + "/" + tenant + "/discovery/v2.0/keys",
		"response_types_supported":              []string{"code", "id_token", "code id_token", "id_token token"},
		"subject_types_supported":               []string{"pairwise"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt", "client_secret_basic"},
		"tenant_region_scope":                   "NA",
	})
}

// token is the client credentials grant with a federated client
// assertion, refused with Entra's errors and AADSTS codes.
func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	tenant := r.PathValue("tenant")
	if err := r.ParseForm(); err != nil {
		refuse(w, http.StatusBadRequest, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'.")
		return
	}
	if !s.tenantExists(tenant) {
		refuse(w, http.StatusBadRequest, "invalid_request", 90002, "Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.", tenant)
		return
	}
	if g := r.PostForm.Get("grant_type"); g != "client_credentials" {
		refuse(w, http.StatusBadRequest, "unsupported_grant_type", 70003, "The app requested an unsupported grant type '%s'.", g)
		return
	}
	clientID := r.PostForm.Get("client_id")
	subjects, ok := s.app(tenant, clientID)
	if !ok {
		refuse(w, http.StatusBadRequest, "unauthorized_client", 700016, "Application with identifier '%s' was not found in the directory '%s'.", clientID, tenant)
		return
	}
	scope, msg := resourceScope(r.PostForm.Get("scope"))
	if scope == "" {
		refuse(w, http.StatusBadRequest, "invalid_scope", 1002012, "%s", msg)
		return
	}
	if t := r.PostForm.Get("client_assertion_type"); t != assertionType {
		refuse(w, http.StatusBadRequest, "invalid_request", 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
		return
	}
	subject, code, msg := s.reviewAssertion(r.Context(), r.PostForm.Get("client_assertion"), subjects)
	if code != 0 {
		refuse(w, http.StatusBadRequest, "invalid_client", code, "%s", msg)
		return
	}
	access, err := s.sign(tenant, clientID, subject, scope)
	if err != nil {
		refuse(w, http.StatusInternalServerError, "server_error", 50000, "%s", err)
		return
	}
	answer(w, http.StatusOK, map[string]any{
		"token_type":     "Bearer",
		"expires_in":     int(tokenLifetime.Seconds()) - 1,
		"ext_expires_in": int(tokenLifetime.Seconds()) - 1,
		"access_token":   access,
	})
}

// reviewAssertion checks the client assertion as Entra checks one against
// the app's federated identity credentials: meant for Entra, authentic
// (a TokenReview of the cluster that signed it), of a trusted subject. It
// returns that subject, or the AADSTS code and message of the refusal.
func (s *Server) reviewAssertion(ctx context.Context, assertion string, trusted []string) (string, int, string) {
	// The claims name the refusal; only the review makes them true.
	var claims jwt.RegisteredClaims
	if _, _, err := jwt.NewParser().ParseUnverified(assertion, &claims); err != nil {
		return "", 50027, "JWT token is invalid or malformed."
	}
	if !claims.VerifyAudience(Audience, true) {
		return "", 700212, fmt.Sprintf("No matching federated identity record found for presented assertion audience '%s'.", strings.Join(claims.Audience, ","))
	}
	review := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: assertion, Audiences: []string{Audience}}}
	if err := s.o.Kube.Create(ctx, review); err != nil {
		return "", 50000, "There was an error issuing a token: " + err.Error()
	}
	if !review.Status.Authenticated || !slices.Contains(review.Status.Audiences, Audience) {
		return "", 700027, "Client assertion failed signature validation."
	}
	subject := review.Status.User.Username
	if !slices.Contains(trusted, subject) {
		return "", 70021, fmt.Sprintf("No matching federated identity record found for presented assertion. Assertion Issuer: '%s'. Assertion Subject: '%s'. Assertion Audience: '%s'.",
			claims.Issuer, subject, Audience)
	}
	return subject, 0, ""
}

// resourceScope is the one resource scope (<resource>/.default) of a
// client credentials request, beside which only the OIDC scopes may be;
// or "" and Entra's refusal.
func resourceScope(scopes string) (string, string) {
	var resource string
	for _, sc := range strings.Fields(scopes) {
		switch {
		case slices.Contains(oidcScopes, sc):
		case resource == "" && strings.HasSuffix(sc, "/.default"):
			resource = sc
		default:
			return "", fmt.Sprintf("The provided value '%s' for the input parameter 'scope' is not valid. The scope requested must be a single resource with the '/.default' suffix.", scopes)
		}
	}
	if resource == "" {
		return "", "The provided request must include a 'scope' input parameter."
	}
	return resource, ""
}

// sign issues the access token of the app for scope's resource, an hour
// long, and counts it.
func (s *Server) sign(tenant, clientID, subject, scope string) (string, error) {
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return "", err
	}
	now := time.Now()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodRS256, Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    "https://sts.windows.net/" + tenant + "/",
			Subject:   subject,
			Audience:  jwt.ClaimStrings{strings.TrimSuffix(scope, "/.default")},
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(tokenLifetime)),
			ID:        hex.EncodeToString(id),
		},
		TenantID: tenant, AppID: clientID,
	}).SignedString(s.key)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	s.issued[tenant+"/"+clientID]++
	s.mu.Unlock()
	return tok, nil
}

func (s *Server) tenantExists(tenant string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.apps[tenant]
	return ok
}

func (s *Server) app(tenant, clientID string) ([]string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	subjects, ok := s.apps[tenant][clientID]
	return slices.Clone(subjects), ok
}

// refuse answers an OAuth error as Entra does: the AADSTS code leads the
// description and is repeated in error_codes.
func refuse(w http.ResponseWriter, status int, code string, aadsts int, format string, args ...any) {
	answer(w, status, map[string]any{
		"error":             code,
		"error_description": fmt.Sprintf("AADSTS%d: ", aadsts) + fmt.Sprintf(format, args...),
		"error_codes":       []int{aadsts},
		"timestamp":         time.Now().UTC().Format("2006-01-02 15:04:05Z"),
		"error_uri":         fmt.Sprintf("https://login.microsoftonline.com/error?code=%d", aadsts),
	})
}

func answer(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}
