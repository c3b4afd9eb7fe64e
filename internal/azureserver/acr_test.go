package azureserver

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// The exchange answers the registry's refresh token for an access token
// for ACR of an app with pull access, and refuses anything else.
func TestACRExchange(t *testing.T) {
	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	const registry = "example.azurecr.io"
	acr, err := s.NewACR(registry)
	if err != nil {
		t.Fatal(err)
	}
	acr.Grant("tenant", "puller")
	token := func(client, scope string) string {
		tok, err := s.sign("tenant", client, "system:serviceaccount:ns:sa", scope)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	other, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.sign("tenant", "puller", "system:serviceaccount:ns:sa", ScopeACR)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name                        string
		grant, service, accessToken string
		status                      int
	}{
		{"puller", "access_token", registry, token("puller", ScopeACR), http.StatusOK},
		{"not granted", "access_token", registry, token("outsider", ScopeACR), http.StatusUnauthorized},
		{"token for devops", "access_token", registry, token("puller", ScopeDevOps), http.StatusUnauthorized},
		{"token of another issuer", "access_token", registry, foreign, http.StatusUnauthorized},
		{"other service", "access_token", "other.azurecr.io", token("puller", ScopeACR), http.StatusBadRequest},
		{"refresh token grant", "refresh_token", registry, token("puller", ScopeACR), http.StatusBadRequest},
	} {
		t.Run(tt.name, func(t *testing.T) {
			form := url.Values{"grant_type": {tt.grant}, "service": {tt.service}, "access_token": {tt.accessToken}}
			req := httptest.NewRequest(http.MethodPost, "/oauth2/exchange", strings.NewReader(form.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			rec := httptest.NewRecorder()
			acr.ServeHTTP(rec, req)
			var answer struct {
				RefreshToken string `json:"refresh_token"`
			}
			if err := json.NewDecoder(rec.Body).Decode(&answer); err != nil {
				t.Fatal(err)
			}
			if rec.Code != tt.status || (answer.RefreshToken == acr.RefreshToken) != (tt.status == http.StatusOK) {
				t.Errorf("%d, refresh token %q: want %d and the registry's token only on success", rec.Code, answer.RefreshToken, tt.status)
			}
		})
	}
	if n := acr.Exchanged("tenant", "puller"); n != 1 {
		t.Errorf("exchanged %d, want 1", n)
	}
}
