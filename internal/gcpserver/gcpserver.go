// Package gcpserver stands in for the Google Cloud endpoints that
// fluxcd/pkg/auth's gcp provider and Google's client libraries reach for
// credentials, for tests: the GCE/GKE metadata server (plain HTTP
// on loopback, as GCE_METADATA_HOST names it) that issues the controller's
// access token and describes the GKE cluster, and for GKE workload
// identity federation the Security Token Service (sts.googleapis.com),
// which exchanges a Kubernetes ServiceAccount token it validates with a
// TokenReview against the cluster's API server, and IAM Credentials
// (iamcredentials.googleapis.com), which issues a Google service
// account's access token to the federated identities bound to it, and
// the OAuth 2.0 token endpoint (oauth2.googleapis.com), which issues it
// to the holders of the account's keys. Each checks what the real one
// checks of a request and answers in its format.
package gcpserver

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Hosts are the host names of the HTTPS endpoints Handler serves.
var Hosts = []string{"sts.googleapis.com", "iamcredentials.googleapis.com", "oauth2.googleapis.com"}

// cloudPlatformScope is what a token must be asked for to reach Artifact
// Registry.
const cloudPlatformScope = "https://www.googleapis.com/auth/cloud-platform"

// Server is one project with one GKE cluster; the zero value is not usable.
type Server struct {
	// Project, Location and Cluster are the GKE cluster's, as its
	// metadata server describes it.
	Project, Location, Cluster string
	// ControllerToken is the access token the metadata server issues to
	// the node's (the controller's) identity.
	ControllerToken string

	kube     client.Client
	metadata *httptest.Server

	mu      sync.Mutex
	failing bool
	// accounts are the Google service accounts by email.
	accounts map[string]*account
	// federated are the STS tokens issued, to the Kubernetes user each
	// was exchanged for.
	federated map[string]string
}

type account struct {
	token   string
	members []string
	// keys are the account's key IDs and public keys (NewKey).
	keys map[string]*rsa.PublicKey
}

// Start starts the metadata server of project's cluster on loopback; kube
// reviews the ServiceAccount tokens STS is given.
func Start(kube client.Client, project, location, cluster string) *Server {
	s := &Server{Project: project, Location: location, Cluster: cluster, ControllerToken: NewToken("ya29.controller"),
		kube: kube, accounts: map[string]*account{}, federated: map[string]string{}}
	s.metadata = httptest.NewServer(http.HandlerFunc(s.serveMetadata))
	return s
}

// MetadataHost is host:port of the metadata server, for GCE_METADATA_HOST.
func (s *Server) MetadataHost() string { return strings.TrimPrefix(s.metadata.URL, "http://") }

// Close stops the metadata server.
func (s *Server) Close() { s.metadata.Close() }

// NewToken is an unguessable token starting with prefix.
func NewToken(prefix string) string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return prefix + "." + hex.EncodeToString(b)
}

// SetFailing makes the metadata server answer every token request with
// 503 Service Unavailable (true) or serve again (false).
func (s *Server) SetFailing(failing bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failing = failing
}

// AddServiceAccount creates the Google service account email, whose
// access token is token.
func (s *Server) AddServiceAccount(email, token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.accounts[email] = &account{token: token}
}

// Bind grants the Kubernetes ServiceAccount namespace/name of the cluster
// roles/iam.workloadIdentityUser on the Google service account email.
func (s *Server) Bind(email, namespace, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.accounts[email]
	a.members = append(a.members, serviceAccountUser(namespace, name))
}

// WorkloadIdentityPool is the cluster's pool, the audience of the
// Kubernetes tokens STS accepts.
func (s *Server) WorkloadIdentityPool() string { return s.Project + ".svc.id.goog" }

// audience is what STS must be asked for: the pool and the cluster as
// its identity provider.
func (s *Server) audience() string {
	return fmt.Sprintf("identitynamespace:%s:https://container.googleapis.com/v1/projects/%s/locations/%s/clusters/%s",
		s.WorkloadIdentityPool(), s.Project, s.Location, s.Cluster)
}

func serviceAccountUser(namespace, name string) string {
	return "system:serviceaccount:" + namespace + ":" + name
}

// serveMetadata answers as the metadata server does: only requests with
// the Metadata-Flavor header and not relayed by a proxy.
func (s *Server) serveMetadata(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Metadata-Flavor", "Google")
	if r.Header.Get("Metadata-Flavor") != "Google" || r.Header.Get("X-Forwarded-For") != "" {
		http.Error(w, "Missing required header \"Metadata-Flavor\": \"Google\"", http.StatusForbidden)
		return
	}
	path, ok := strings.CutPrefix(r.URL.Path, "/computeMetadata/v1/")
	if !ok || r.Method != http.MethodGet {
		http.NotFound(w, r)
		return
	}
	values := map[string]string{
		"project/project-id":                   s.Project,
		"instance/attributes/cluster-location": s.Location,
		"instance/attributes/cluster-name":     s.Cluster,
		"universe/universe-domain":             "googleapis.com",
	}
	if v, ok := values[path]; ok {
		w.Header().Set("Content-Type", "application/text")
		fmt.Fprint(w, v)
		return
	}
	if path != "instance/service-accounts/default/token" {
		http.NotFound(w, r)
		return
	}
	s.mu.Lock()
	failing := s.failing
	s.mu.Unlock()
	if failing {
		http.Error(w, "metadata server unavailable", http.StatusServiceUnavailable)
		return
	}
	if !slices.Contains(strings.Split(r.URL.Query().Get("scopes"), ","), cloudPlatformScope) {
		http.Error(w, "token not asked for the cloud-platform scope", http.StatusBadRequest)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"access_token": s.ControllerToken, "expires_in": 3599, "token_type": "Bearer"})
}

// Handler serves STS, IAM Credentials and the OAuth 2.0 token endpoint
// (see Hosts).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST sts.googleapis.com/v1/token", s.serveSTS)
	mux.HandleFunc("POST iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{action}", s.serveGenerateAccessToken)
	mux.HandleFunc("POST oauth2.googleapis.com/token", s.serveToken)
	return mux
}

// serveSTS exchanges a Kubernetes ServiceAccount token of the cluster
// for a federated access token, as Google's STS does for a GKE
// workload identity pool.
func (s *Server) serveSTS(w http.ResponseWriter, r *http.Request) {
	stsError := func(desc string) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant", "error_description": desc})
	}
	if err := r.ParseForm(); err != nil {
		stsError(err.Error())
		return
	}
	for k, want := range map[string]string{
		"grant_type":           "urn:ietf:params:oauth:grant-type:token-exchange",
		"requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
		"subject_token_type":   "urn:ietf:params:oauth:token-type:jwt",
		"audience":             s.audience(),
	} {
		if got := r.PostForm.Get(k); got != want {
			stsError(fmt.Sprintf("invalid %s '%s'", k, got))
			return
		}
	}
	if !slices.Contains(strings.Fields(r.PostForm.Get("scope")), cloudPlatformScope) {
		stsError("the cloud-platform scope is required")
		return
	}
	review := &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{
		Token: r.PostForm.Get("subject_token"), Audiences: []string{s.WorkloadIdentityPool()},
	}}
	if err := s.kube.Create(r.Context(), review); err != nil {
		http.Error(w, "token review: "+err.Error(), http.StatusInternalServerError)
		return
	}
	if !review.Status.Authenticated || !strings.HasPrefix(review.Status.User.Username, "system:serviceaccount:") {
		stsError("The subject token is not valid: " + review.Status.Error)
		return
	}
	token := NewToken("ya29.federated")
	s.mu.Lock()
	s.federated[token] = review.Status.User.Username
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": token, "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
		"token_type": "Bearer", "expires_in": 3600,
	})
}

// serveGenerateAccessToken issues the access token of the service
// account <email>:generateAccessToken names to a federated identity
// bound to it.
func (s *Server) serveGenerateAccessToken(w http.ResponseWriter, r *http.Request) {
	email, ok := strings.CutSuffix(r.PathValue("action"), ":generateAccessToken")
	if !ok {
		http.NotFound(w, r)
		return
	}
	var req struct {
		Scope    []string `json:"scope"`
		Lifetime string   `json:"lifetime"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || !slices.Contains(req.Scope, cloudPlatformScope) {
		googleError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "the cloud-platform scope is required")
		return
	}
	lifetime, err := time.ParseDuration(req.Lifetime)
	if req.Lifetime == "" {
		lifetime, err = time.Hour, nil
	}
	if err != nil || lifetime <= 0 || lifetime > 12*time.Hour {
		googleError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "invalid lifetime '"+req.Lifetime+"'")
		return
	}
	bearer, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	s.mu.Lock()
	user, authenticated := s.federated[bearer]
	a := s.accounts[email]
	s.mu.Unlock()
	if !authenticated {
		googleError(w, http.StatusUnauthorized, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
		return
	}
	if a == nil || !slices.Contains(a.members, user) {
		googleError(w, http.StatusForbidden, "PERMISSION_DENIED",
			"Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"accessToken": a.token, "expireTime": time.Now().Add(lifetime).UTC().Format(time.RFC3339)})
}

func googleError(w http.ResponseWriter, code int, status, msg string) {
	writeJSON(w, code, map[string]any{"error": map[string]any{"code": code, "message": msg, "status": status}})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
