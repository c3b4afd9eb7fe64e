package minioserver

import (
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v4"
)

// Only current tokens signed as MinIO's STS signs them are its sessions.
func TestVerifySessionToken(t *testing.T) {
	exp := time.Now().Add(time.Hour).Unix()
	sign := func(m jwt.SigningMethod, key string, claims jwt.MapClaims) string {
		tok, err := jwt.NewWithClaims(m, claims).SignedString([]byte(key))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	good := jwt.MapClaims{"accessKey": "AK", "sub": "system:serviceaccount:ns:sa", "exp": exp}
	s, err := VerifySessionToken(sign(jwt.SigningMethodHS512, Password, good))
	if err != nil || s != (STSSession{AccessKey: "AK", Subject: "system:serviceaccount:ns:sa"}) {
		t.Fatalf("%+v, %v", s, err)
	}
	for name, tok := range map[string]string{
		"other key":   sign(jwt.SigningMethodHS512, "not-the-root-secret", good),
		"other alg":   sign(jwt.SigningMethodHS256, Password, good),
		"expired":     sign(jwt.SigningMethodHS512, Password, jwt.MapClaims{"accessKey": "AK", "sub": "s", "exp": time.Now().Add(-time.Minute).Unix()}),
		"no expiry":   sign(jwt.SigningMethodHS512, Password, jwt.MapClaims{"accessKey": "AK", "sub": "s"}),
		"no subject":  sign(jwt.SigningMethodHS512, Password, jwt.MapClaims{"accessKey": "AK", "exp": exp}),
		"not a token": "session",
	} {
		if _, err := VerifySessionToken(tok); err == nil {
			t.Errorf("%s: verified", name)
		}
	}
}
