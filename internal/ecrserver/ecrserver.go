// Package ecrserver is an Amazon ECR API stand-in for tests of ECR
// registry authentication: GetAuthorizationToken (AWS JSON 1.1 at
// api.ecr.<region>.amazonaws.com), which fluxcd/pkg/auth's aws provider
// calls with temporary credentials from STS and whose answer is the
// registry's basic auth password for the user AWS.
//
// It answers only requests SigV4-signed for ECR of its region, recently,
// whose access key and session token belong together as the STS that
// issued them says (Options.Sessions), for an identity it was told may
// pull (Allow). The signature itself is checked for form only: checking
// it needs the temporary secret key, which only the STS knows.
package ecrserver

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

const (
	// target is the X-Amz-Target of GetAuthorizationToken.
	target = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"
	// contentType is the AWS JSON 1.1 protocol's.
	contentType = "application/x-amz-json-1.1"
	// signatureSkew is how far from now AWS accepts a request's
	// X-Amz-Date.
	signatureSkew = 5 * time.Minute
	// tokenLifetime is how long ECR's authorization tokens are valid.
	tokenLifetime = 12 * time.Hour
	// amzDate is SigV4's X-Amz-Date format.
	amzDate = "20060102T150405Z"
)

// signedHeaders must be among a request's signed headers: what makes the
// signature about this call, with these credentials, now.
var signedHeaders = []string{"host", "x-amz-date", "x-amz-security-token", "x-amz-target"}

// Options configure the stand-in.
type Options struct {
	// Region and Account name the registry, <Account>.dkr.ecr.<Region>.amazonaws.com.
	Region, Account string
	// Password is the registry's password for the user AWS, what the
	// authorization tokens carry.
	Password string
	// Sessions verifies a session token with the STS that issued it and
	// returns the access key ID it goes with and the identity it was
	// issued to.
	Sessions func(token string) (accessKey, identity string, err error)
}

// Server is the stand-in; it is an http.Handler.
type Server struct {
	o Options

	mu sync.Mutex
	// allowed are the identities with ecr:GetAuthorizationToken; issued
	// counts the tokens each got.
	allowed map[string]bool
	issued  map[string]int
}

// New returns the stand-in for o.
func New(o Options) *Server {
	return &Server{o: o, allowed: map[string]bool{}, issued: map[string]int{}}
}

// Host is the ECR API's host name.
func (s *Server) Host() string { return "api.ecr." + s.o.Region + ".amazonaws.com" }

// Registry is the registry's host name.
func (s *Server) Registry() string { return s.o.Account + ".dkr.ecr." + s.o.Region + ".amazonaws.com" }

// Allow lets identity (as Options.Sessions names it) get authorization
// tokens, as an IAM policy granting ecr:GetAuthorizationToken would.
func (s *Server) Allow(identity string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.allowed[identity] = true
}

// Issued is how many authorization tokens identity got.
func (s *Server) Issued(identity string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issued[identity]
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Every AWS answer names its request; the SDK's errors quote it.
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	w.Header().Set("X-Amzn-Requestid", hex.EncodeToString(id))
	if r.Method != http.MethodPost || r.URL.Path != "/" {
		refuse(w, http.StatusNotFound, "UnknownOperationException", "")
		return
	}
	if t := r.Header.Get("X-Amz-Target"); t != target {
		refuse(w, http.StatusBadRequest, "UnknownOperationException", "")
		return
	}
	if !strings.HasPrefix(r.Header.Get("Content-Type"), contentType) {
		refuse(w, http.StatusBadRequest, "SerializationException", "")
		return
	}
	var in struct {
		RegistryIDs []string `json:"registryIds"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&in); err != nil {
		refuse(w, http.StatusBadRequest, "SerializationException", "Start of structure or map found where not expected.")
		return
	}
	identity, status, code, msg := s.authenticate(r)
	if status != 0 {
		refuse(w, status, code, msg)
		return
	}
	for _, id := range in.RegistryIDs {
		if id != s.o.Account {
			refuse(w, http.StatusBadRequest, "InvalidParameterException", fmt.Sprintf("Invalid parameter at 'registryIds' failed to satisfy constraint: 'registry %s not found'", id))
			return
		}
	}
	s.mu.Lock()
	allowed := s.allowed[identity]
	if allowed {
		s.issued[identity]++
	}
	s.mu.Unlock()
	if !allowed {
		refuse(w, http.StatusBadRequest, "AccessDeniedException", fmt.Sprintf(
			"User: %s is not authorized to perform: ecr:GetAuthorizationToken on resource: * because no identity-based policy allows the ecr:GetAuthorizationToken action", identity))
		return
	}
	token := base64.StdEncoding.EncodeToString([]byte("AWS:" + s.o.Password))
	w.Header().Set("Content-Type", contentType)
	_ = json.NewEncoder(w).Encode(map[string]any{"authorizationData": []map[string]any{{
		"authorizationToken": token,
		"expiresAt":          float64(time.Now().Add(tokenLifetime).Unix()),
		"proxyEndpoint":      "https://" + s.Registry(),
	}}})
}

// authenticate checks r's SigV4 Authorization header and session token
// as far as the stand-in can (the package doc says how far) and returns
// the caller's identity, or the status, error code and message AWS
// refuses with.
func (s *Server) authenticate(r *http.Request) (string, int, string, string) {
	const algorithm = "AWS4-HMAC-SHA256 "
	authz, ok := strings.CutPrefix(r.Header.Get("Authorization"), algorithm)
	if !ok {
		return "", http.StatusBadRequest, "MissingAuthenticationTokenException", "Missing Authentication Token"
	}
	fields := map[string]string{}
	for f := range strings.SplitSeq(authz, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(f), "=")
		fields[k] = v
	}
	incomplete := func(what string) (string, int, string, string) {
		return "", http.StatusBadRequest, "IncompleteSignatureException", what + " Authorization=" + algorithm + authz
	}
	scope := strings.Split(fields["Credential"], "/")
	if len(scope) != 5 || scope[0] == "" || scope[4] != "aws4_request" {
		return incomplete("Authorization header requires 'Credential' parameter.")
	}
	if scope[2] != s.o.Region || scope[3] != "ecr" {
		return "", http.StatusForbidden, "InvalidSignatureException",
			fmt.Sprintf("Credential should be scoped to a valid region and service: '%s/ecr', not '%s/%s'.", s.o.Region, scope[2], scope[3])
	}
	signed := strings.Split(fields["SignedHeaders"], ";")
	for _, h := range signedHeaders {
		if !slices.Contains(signed, h) {
			return incomplete("Authorization header requires '" + h + "' to be signed.")
		}
	}
	if sig, err := hex.DecodeString(fields["Signature"]); err != nil || len(sig) != 32 {
		return incomplete("Authorization header requires 'Signature' parameter.")
	}
	at, err := time.Parse(amzDate, r.Header.Get("X-Amz-Date"))
	if err != nil || at.Format("20060102") != scope[1] {
		return incomplete("Date must be in ISO-8601 'basic format' and agree with the credential scope.")
	}
	if d := time.Since(at); d > signatureSkew || d < -signatureSkew {
		return "", http.StatusForbidden, "InvalidSignatureException", "Signature expired: " + r.Header.Get("X-Amz-Date") + " is now earlier or later than the allowed skew."
	}
	accessKey, identity, err := s.o.Sessions(r.Header.Get("X-Amz-Security-Token"))
	if err != nil || accessKey != scope[0] {
		return "", http.StatusBadRequest, "UnrecognizedClientException", "The security token included in the request is invalid."
	}
	return identity, 0, "", ""
}

// refuse answers an AWS JSON 1.1 error.
func refuse(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("X-Amzn-ErrorType", code)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"__type": code, "message": msg})
}
