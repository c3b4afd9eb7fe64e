package minioserver

import (
	"errors"
	"fmt"

	"github.com/golang-jwt/jwt/v4"
)

// STSSession is what a session token of MinIO's STS says of the
// temporary credentials it goes with.
type STSSession struct {
	// AccessKey is the credentials' access key ID.
	AccessKey string
	// Subject is the web identity's subject (AssumeRoleWithWebIdentity's
	// token's sub claim), a ServiceAccount's system:serviceaccount:<ns>:<name>.
	Subject string
}

// VerifySessionToken checks that token is the session token of current
// temporary credentials that the STS of a server of this package issued,
// and returns what it says. MinIO's session tokens are JWTs (HS512) of
// the web identity's claims and the access key, signed with the root
// secret key, which every server here shares. The temporary secret key is
// in neither the token nor any MinIO API, so a request signed with the
// credentials cannot be checked this way: only who they were issued to.
func VerifySessionToken(token string) (STSSession, error) {
	var claims jwt.MapClaims
	_, err := jwt.ParseWithClaims(token, &claims, func(*jwt.Token) (any, error) { return []byte(Password), nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS512.Alg()}))
	if err != nil {
		return STSSession{}, fmt.Errorf("session token: %w", err)
	}
	// Credentials without an expiry are not temporary.
	if _, ok := claims["exp"]; !ok {
		return STSSession{}, errors.New("session token: no expiry")
	}
	access, _ := claims["accessKey"].(string)
	sub, _ := claims["sub"].(string)
	if access == "" || sub == "" {
		return STSSession{}, errors.New("session token: no access key or subject")
	}
	return STSSession{AccessKey: access, Subject: sub}, nil
}
