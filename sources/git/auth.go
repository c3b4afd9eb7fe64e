package git

import (
	"errors"
	"fmt"
	"net/url"
	"os"

	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Auth is how a checkout authenticates: the transport's auth method and,
// for HTTPS, extra CA certificates.
type Auth struct {
	method   transport.AuthMethod
	caBundle []byte
}

// AuthFromSecret builds the auth of u from the data of a Flux Git secret,
// with Flux's keys: username and password, or bearerToken, plus ca.crt
// (or caFile) for HTTP(S); identity, known_hosts and an optional password
// for SSH. A nil data map uses the credentials in the URL, if any. Missing
// or unusable credentials fail with ErrInvalidAuth.
func AuthFromSecret(u *url.URL, data map[string][]byte) (*Auth, error) {
	switch u.Scheme {
	case "http", "https":
		a := &Auth{caBundle: data["ca.crt"]}
		if len(a.caBundle) == 0 {
			a.caBundle = data["caFile"]
		}
		if token, ok := data["bearerToken"]; ok {
			a.method = &githttp.TokenAuth{Token: string(token)}
			return a, nil
		}
		user, pass := string(data["username"]), string(data["password"])
		if user == "" && u.User != nil {
			user = u.User.Username()
		}
		if pass == "" && u.User != nil {
			pass, _ = u.User.Password()
		}
		if user == "" && pass != "" {
			return nil, fmt.Errorf("%w: '%s' auth option 'password' requires 'username' to be set", ErrInvalidAuth, u.Scheme)
		}
		if user != "" {
			a.method = &githttp.BasicAuth{Username: user, Password: pass}
		}
		return a, nil
	case "ssh":
		identity, hosts := data["identity"], data["known_hosts"]
		if len(identity) == 0 {
			return nil, fmt.Errorf("%w: 'ssh' auth option 'identity' is required in the secret", ErrInvalidAuth)
		}
		if len(hosts) == 0 {
			return nil, fmt.Errorf("%w: 'ssh' auth option 'known_hosts' is required in the secret", ErrInvalidAuth)
		}
		user := "git"
		if u.User != nil && u.User.Username() != "" {
			user = u.User.Username()
		}
		var (
			signer gossh.Signer
			err    error
		)
		if pass := data["password"]; len(pass) > 0 {
			signer, err = gossh.ParsePrivateKeyWithPassphrase(identity, pass)
		} else {
			signer, err = gossh.ParsePrivateKey(identity)
		}
		if err != nil {
			var missing *gossh.PassphraseMissingError
			if errors.As(err, &missing) {
				return nil, fmt.Errorf("%w: SSH identity key is encrypted but no 'password' field was provided in the secret", ErrInvalidAuth)
			}
			return nil, fmt.Errorf("%w: parse SSH identity: %w", ErrInvalidAuth, err)
		}
		cb, err := knownHostsCallback(hosts)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidAuth, err)
		}
		return &Auth{method: &gitssh.PublicKeys{
			User: user, Signer: signer,
			HostKeyCallbackHelper: gitssh.HostKeyCallbackHelper{HostKeyCallback: cb},
		}}, nil
	}
	return nil, fmt.Errorf("%w: unsupported URL scheme '%s'", ErrInvalidURL, u.Scheme)
}

// WithBearerToken is a with its HTTP(S) credentials replaced by token, a
// cloud provider's access token (Azure DevOps takes Entra ID tokens as
// bearer tokens), and its CA certificates kept. An SSH auth is returned
// as is: provider credentials are for Git over HTTPS.
func (a *Auth) WithBearerToken(token string) *Auth {
	if _, ssh := a.method.(*gitssh.PublicKeys); ssh {
		return a
	}
	return &Auth{method: &githttp.TokenAuth{Token: token}, caBundle: a.caBundle}
}

// ParseURL accepts the URLs a checkout can use: http, https and ssh, with
// a host; anything else fails with ErrInvalidURL.
func ParseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: failed to parse url '%s': %w", ErrInvalidURL, raw, err)
	}
	switch u.Scheme {
	case "http", "https", "ssh":
	default:
		return nil, fmt.Errorf("%w: url '%s' has unsupported scheme '%s': want http, https or ssh", ErrInvalidURL, raw, u.Scheme)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("%w: url '%s' has no host", ErrInvalidURL, raw)
	}
	return u, nil
}

// knownHostsCallback checks host keys against known_hosts content.
// x/crypto's parser reads files only, so the content goes through one.
func knownHostsCallback(content []byte) (gossh.HostKeyCallback, error) {
	f, err := os.CreateTemp("", "known_hosts-")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(content); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	cb, err := knownhosts.New(f.Name())
	if err != nil {
		return nil, fmt.Errorf("parse known_hosts: %w", err)
	}
	return cb, nil
}
