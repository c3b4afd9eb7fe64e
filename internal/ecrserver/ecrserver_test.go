package ecrserver

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/ecr"
)

const (
	region  = "eu-west-3"
	account = "123456789012"
)

// session is the one set of temporary credentials the test's STS issued.
var session = aws.Credentials{AccessKeyID: "ASIATEST", SecretAccessKey: "secret", SessionToken: "session-of-puller"}

func newServer(t *testing.T) (*Server, *httptest.Server) {
	t.Helper()
	s := New(Options{Region: region, Account: account, Password: "pw", Sessions: func(token string) (string, string, error) {
		if token != session.SessionToken {
			return "", "", errors.New("unknown session")
		}
		return session.AccessKeyID, "puller", nil
	}})
	srv := httptest.NewTLSServer(s)
	t.Cleanup(srv.Close)
	return s, srv
}

// The SDK's own call, as fluxcd/pkg/auth makes it, gets the registry's
// password once the identity is allowed.
func TestGetAuthorizationTokenSDK(t *testing.T) {
	s, srv := newServer(t)
	c := ecr.New(ecr.Options{Region: region, BaseEndpoint: aws.String(srv.URL), HTTPClient: srv.Client(),
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) { return session, nil })})
	_, err := c.GetAuthorizationToken(context.Background(), &ecr.GetAuthorizationTokenInput{})
	if err == nil || !strings.Contains(err.Error(), "AccessDeniedException: User: puller is not authorized to perform: ecr:GetAuthorizationToken") {
		t.Fatalf("before Allow: %v, want AccessDeniedException", err)
	}
	s.Allow("puller")
	out, err := c.GetAuthorizationToken(context.Background(), &ecr.GetAuthorizationTokenInput{})
	if err != nil {
		t.Fatal(err)
	}
	d := out.AuthorizationData[0]
	if tok, _ := base64.StdEncoding.DecodeString(aws.ToString(d.AuthorizationToken)); string(tok) != "AWS:pw" {
		t.Errorf("authorization token %q", tok)
	}
	if aws.ToString(d.ProxyEndpoint) != "https://"+account+".dkr.ecr."+region+".amazonaws.com" || time.Until(aws.ToTime(d.ExpiresAt)) < 11*time.Hour {
		t.Errorf("proxy endpoint %q, expires at %v", aws.ToString(d.ProxyEndpoint), d.ExpiresAt)
	}
	if n := s.Issued("puller"); n != 1 {
		t.Errorf("issued %d, want 1", n)
	}
}

// Requests that are not SigV4-signed for ECR of the region, now, with
// the session's credentials, are refused as AWS refuses them.
func TestGetAuthorizationTokenRefusals(t *testing.T) {
	s, srv := newServer(t)
	s.Allow("puller")
	other := session
	other.AccessKeyID = "ASIAOTHER"
	static := aws.Credentials{AccessKeyID: session.AccessKeyID, SecretAccessKey: "secret"}
	for _, tt := range []struct {
		name            string
		creds           *aws.Credentials
		service, region string
		at              time.Time
		target          string
		status          int
		code            string
	}{
		{"signed", &session, "ecr", region, time.Now(), target, http.StatusOK, ""},
		{"unsigned", nil, "", "", time.Now(), target, http.StatusBadRequest, "MissingAuthenticationTokenException"},
		{"other region", &session, "ecr", "us-east-1", time.Now(), target, http.StatusForbidden, "InvalidSignatureException"},
		{"other service", &session, "s3", region, time.Now(), target, http.StatusForbidden, "InvalidSignatureException"},
		{"stale", &session, "ecr", region, time.Now().Add(-10 * time.Minute), target, http.StatusForbidden, "InvalidSignatureException"},
		{"no session token", &static, "ecr", region, time.Now(), target, http.StatusBadRequest, "IncompleteSignatureException"},
		{"session of another key", &other, "ecr", region, time.Now(), target, http.StatusBadRequest, "UnrecognizedClientException"},
		{"other operation", &session, "ecr", region, time.Now(), "AmazonEC2ContainerRegistry_V20150921.ListImages", http.StatusBadRequest, "UnknownOperationException"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body := "{}"
			req, err := http.NewRequest(http.MethodPost, srv.URL+"/", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", contentType)
			req.Header.Set("X-Amz-Target", tt.target)
			if tt.creds != nil {
				sum := sha256.Sum256([]byte(body))
				if err := v4.NewSigner().SignHTTP(context.Background(), *tt.creds, req, hex.EncodeToString(sum[:]), tt.service, tt.region, tt.at); err != nil {
					t.Fatal(err)
				}
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var answer struct {
				Type string `json:"__type"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.status || answer.Type != tt.code {
				t.Errorf("%d %q, want %d %q", resp.StatusCode, answer.Type, tt.status, tt.code)
			}
		})
	}
}
