package git

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestGitHubAppFromSecret(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
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
		{"no app id", secret(KeyGitHubAppID, ""), "app ID must be provided"},
		{"app id not a number", secret(KeyGitHubAppID, "x12"), "app ID must be provided"},
		{"neither owner nor id", secret(KeyGitHubAppInstallationID, ""), "app installation owner or ID must be provided"},
		{"owner and id", secret(KeyGitHubAppInstallationOwner, "org"), "only one of app installation owner or ID"},
		{"id not a number", secret(KeyGitHubAppInstallationID, "3x"), "'githubAppInstallationID' is not a number"},
		{"no key", secret(KeyGitHubAppPrivateKey, ""), "private key must be provided"},
		{"not PEM", secret(KeyGitHubAppPrivateKey, "not a key"), "could not parse private key: no PEM block"},
		{"not RSA", secret(KeyGitHubAppPrivateKey, string(ecPEM)), "want RSA"},
		{"base url not http", secret(KeyGitHubAppBaseURL, "ftp://ghe.example.com"), "'githubAppBaseURL' must be an http(s) URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app, err := GitHubAppFromSecret(tt.data)
			if tt.err != "" {
				if !errors.Is(err, ErrInvalidAuth) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want ErrInvalidAuth with %q", err, tt.err)
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

func TestGitHubAppJWT(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	app := &GitHubApp{AppID: 99, key: key}
	now := time.Unix(1_800_000_000, 0)
	tok, err := app.jwt(now)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("JWT %q has %d parts", tok, len(parts))
	}
	var header map[string]string
	var claims map[string]any
	for i, v := range []any{&header, &claims} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatal(err)
		}
	}
	if header["alg"] != "RS256" || claims["iss"] != "99" ||
		claims["iat"] != float64(now.Unix()-30) || claims["exp"] != float64(now.Unix()+90) {
		t.Errorf("header %v claims %v", header, claims)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(&key.PublicKey, crypto.SHA256, digest[:], sig); err != nil {
		t.Errorf("signature does not verify with the app's key: %v", err)
	}
}
