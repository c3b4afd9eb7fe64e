package oci

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// Credentials are registry credentials by host[:port], read from a Docker
// config; they resolve as an authn.Keychain.
type Credentials map[string]authn.AuthConfig

// Resolve returns the credentials of the resource's registry, or anonymous.
func (k Credentials) Resolve(res authn.Resource) (authn.Authenticator, error) {
	if c, ok := k[res.RegistryStr()]; ok {
		return authn.FromConfig(c), nil
	}
	return authn.Anonymous, nil
}

// HostCredentials are what a gives for the registry host alone: a
// cloud provider's login, read once.
func HostCredentials(host string, a authn.Authenticator) (Credentials, error) {
	cfg, err := a.Authorization()
	if err != nil {
		return nil, fmt.Errorf("failed to read the registry credentials: %w", err)
	}
	return Credentials{host: *cfg}, nil
}

// dockerAuth is one entry of a Docker config's auths.
type dockerAuth struct {
	Username      string `json:"username"`
	Password      string `json:"password"`
	Auth          string `json:"auth"`
	IdentityToken string `json:"identitytoken"`
	RegistryToken string `json:"registrytoken"`
}

// ParseDockerConfig reads the credentials of a Docker config: dockerConfigJSON
// in the format of a kubernetes.io/dockerconfigjson Secret's .dockerconfigjson
// ({"auths": {...}}), or, when that is empty, dockerCfg in the legacy
// .dockercfg format. Keys may be host[:port], a URL, or a URL with a path,
// as docker login writes them. What cannot be read fails with ErrInvalidAuth.
func ParseDockerConfig(dockerConfigJSON, dockerCfg []byte) (Credentials, error) {
	var auths map[string]dockerAuth
	switch {
	case len(dockerConfigJSON) > 0:
		var cfg struct {
			Auths map[string]dockerAuth `json:"auths"`
		}
		if err := json.Unmarshal(dockerConfigJSON, &cfg); err != nil {
			return nil, fmt.Errorf("%w: invalid .dockerconfigjson: %w", ErrInvalidAuth, err)
		}
		auths = cfg.Auths
	case len(dockerCfg) > 0:
		if err := json.Unmarshal(dockerCfg, &auths); err != nil {
			return nil, fmt.Errorf("%w: invalid .dockercfg: %w", ErrInvalidAuth, err)
		}
	default:
		return nil, fmt.Errorf("%w: no Docker config", ErrInvalidAuth)
	}
	k := Credentials{}
	for key, a := range auths {
		c := authn.AuthConfig{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken}
		if a.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return nil, fmt.Errorf("%w: invalid auth for '%s': %w", ErrInvalidAuth, key, err)
			}
			user, pass, ok := strings.Cut(string(raw), ":")
			if !ok {
				return nil, fmt.Errorf("%w: auth for '%s' is not 'user:password'", ErrInvalidAuth, key)
			}
			if c.Username == "" {
				c.Username, c.Password = user, pass
			}
		}
		host := registryHost(key)
		k[host] = c
		if host == "docker.io" {
			k[name.DefaultRegistry] = c
		}
	}
	return k, nil
}

// registryHost is the host[:port] of a Docker config key.
func registryHost(key string) string {
	key = strings.TrimPrefix(strings.TrimPrefix(key, "https://"), "http://")
	host, _, _ := strings.Cut(key, "/")
	return host
}
