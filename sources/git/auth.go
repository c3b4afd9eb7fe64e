package reconcilers

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

// gitAuth is how a checkout authenticates: the transport's auth method
// and, for HTTPS, extra CA certificates.
type gitAuth struct {
	method   transport.AuthMethod
	caBundle []byte
}

// gitAuthFromSecret builds the auth of u from a secretRef's data, with
// Flux's keys: username and password, or bearerToken, plus ca.crt (or
// caFile) for HTTP(S); identity, known_hosts and an optional password for
// SSH. A nil data map uses the credentials in the URL, if any.
func gitAuthFromSecret(u *url.URL, data map[string][]byte) (*gitAuth, error) {
	switch u.Scheme {
	case "http", "https":
		a := &gitAuth{caBundle: data["ca.crt"]}
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
			return nil, fmt.Errorf("invalid '%s' auth option: 'password' requires 'username' to be set", u.Scheme)
		}
		if user != "" {
			a.method = &githttp.BasicAuth{Username: user, Password: pass}
		}
		return a, nil
	case "ssh":
		identity, hosts := data["identity"], data["known_hosts"]
		if len(identity) == 0 {
			return nil, errors.New("invalid 'ssh' auth option: 'identity' is required in the secret")
		}
		if len(hosts) == 0 {
			return nil, errors.New("invalid 'ssh' auth option: 'known_hosts' is required in the secret")
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
				return nil, errors.New("SSH identity key is encrypted but no 'password' field was provided in the secret")
			}
			return nil, fmt.Errorf("parse SSH identity: %w", err)
		}
		cb, err := knownHostsCallback(hosts)
		if err != nil {
			return nil, err
		}
		return &gitAuth{method: &gitssh.PublicKeys{
			User: user, Signer: signer,
			HostKeyCallbackHelper: gitssh.HostKeyCallbackHelper{HostKeyCallback: cb},
		}}, nil
	}
	return nil, fmt.Errorf("unsupported URL scheme '%s'", u.Scheme)
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
