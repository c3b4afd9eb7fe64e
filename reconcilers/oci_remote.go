package reconcilers

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"

	"github.com/Masterminds/semver/v3"
	"github.com/fluxcd/pkg/runtime/secrets"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	gcrv1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// The manifest annotations `flux push artifact` writes, quoted in events.
const (
	ociSourceAnnotation   = "org.opencontainers.image.source"
	ociRevisionAnnotation = "org.opencontainers.image.revision"
)

// errOCIList marks a failure to list the repository's tags for spec.ref.semver.
var errOCIList = errors.New("list tags")

// errInvalidRef marks a spec.ref no pull can satisfy (a bad semver range,
// a malformed digest): the object stalls until it changes.
var errInvalidRef = errors.New("invalid reference")

// parseOCIURL turns spec.url, oci://<registry>/<repository>, into the
// repository it names. A tag or digest in the URL is refused: spec.ref
// selects those.
func parseOCIURL(raw string, insecure bool) (name.Repository, error) {
	if !strings.HasPrefix(raw, sourcev1.OCIRepositoryPrefix) {
		return name.Repository{}, errors.New("URL must be in format 'oci://<domain>/<org>/<repo>'")
	}
	s := strings.TrimPrefix(raw, sourcev1.OCIRepositoryPrefix)
	if strings.Contains(s, "@") {
		return name.Repository{}, errors.New("URL must not contain a digest; use spec.ref.digest")
	}
	if i := strings.IndexByte(s, '/'); i >= 0 {
		if _, tag, ok := strings.Cut(s[i+1:], ":"); ok {
			return name.Repository{}, fmt.Errorf("URL must not contain a tag; remove ':%s'", tag)
		}
	}
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	repo, err := name.NewRepository(s, opts...)
	if err != nil {
		return name.Repository{}, err
	}
	if !strings.Contains(s, "/") || repo.RepositoryStr() == "" {
		return name.Repository{}, errors.New("URL must be in format 'oci://<domain>/<org>/<repo>'")
	}
	return repo, nil
}

// ociRemote is how one reconcile talks to the registry: credentials,
// transport and the reconcile's deadline.
type ociRemote struct {
	opts []remote.Option
}

// ociRemote builds the registry client of obj from spec.secretRef,
// spec.certSecretRef and spec.insecure.
func (r *OCIRepositoryReconciler) ociRemote(ctx context.Context, obj *sourcev1.OCIRepository) (*ociRemote, error) {
	var keychain authn.Keychain = authn.NewMultiKeychain()
	if ref := obj.Spec.SecretRef; ref != nil {
		secret := &corev1.Secret{}
		if err := r.Get(ctx, types.NamespacedName{Namespace: obj.Namespace, Name: ref.Name}, secret); err != nil {
			return nil, NewGeneric(fmt.Errorf("failed to get credential: failed to get secret '%s/%s': %w", obj.Namespace, ref.Name, err),
				sourcev1.AuthenticationFailedReason)
		}
		kc, err := ociKeychainFromSecret(secret)
		if err != nil {
			return nil, NewGeneric(fmt.Errorf("failed to get credential: %w", err), sourcev1.AuthenticationFailedReason)
		}
		keychain = kc
	}

	base := remote.DefaultTransport.(*http.Transport).Clone()
	switch ref := obj.Spec.CertSecretRef; {
	case ref != nil && ref.Name != "":
		secret := &corev1.Secret{}
		if err := r.Get(ctx, types.NamespacedName{Namespace: obj.Namespace, Name: ref.Name}, secret); err != nil {
			return nil, NewGeneric(fmt.Errorf("failed to generate transport for '%s': failed to get secret '%s/%s': %w",
				obj.Spec.URL, obj.Namespace, ref.Name, err), sourcev1.AuthenticationFailedReason)
		}
		tlsConfig, err := secrets.TLSConfigFromSecret(ctx, secret, secrets.WithSystemCertPool())
		if err != nil {
			return nil, NewGeneric(fmt.Errorf("failed to generate transport for '%s': %w", obj.Spec.URL, err), sourcev1.AuthenticationFailedReason)
		}
		base.TLSClientConfig = tlsConfig
	case obj.Spec.Insecure:
		// As in Flux: spec.insecure without a CA also accepts any
		// certificate, for registries crane-style tooling pushes to.
		base.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // asked for by spec.insecure
	}
	var transport http.RoundTripper = base
	if !obj.Spec.Insecure {
		transport = ociHTTPSOnly{next: base}
	}
	return &ociRemote{opts: []remote.Option{
		remote.WithContext(ctx),
		remote.WithTransport(transport),
		remote.WithAuthFromKeychain(keychain),
	}}, nil
}

// ociHTTPSOnly refuses plain HTTP. go-containerregistry falls back to
// HTTP for loopback and private-network registries on its own; sourceraft
// speaks plain HTTP only when spec.insecure asks for it.
type ociHTTPSOnly struct{ next http.RoundTripper }

func (t ociHTTPSOnly) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" {
		return nil, fmt.Errorf("plain HTTP to %s refused: set spec.insecure to allow it", req.URL.Host)
	}
	return t.next.RoundTrip(req)
}

// ociRef is spec.ref resolved to a manifest digest.
type ociRef struct {
	repo name.Repository
	// tag is the tag the digest was resolved from; empty for spec.ref.digest.
	tag    string
	digest gcrv1.Hash
	// display is the reference as the user would write it, for messages.
	display string
}

// revision is Flux's: '<tag>@sha256:<hex>', or 'sha256:<hex>' for a
// digest reference.
func (r ociRef) revision() string {
	if r.tag == "" {
		return r.digest.String()
	}
	return r.tag + "@" + r.digest.String()
}

// resolve turns spec.ref into a manifest digest. Precedence as in Flux:
// digest, semver, tag, then the 'latest' tag.
func (o *ociRemote) resolve(repo name.Repository, ref *sourcev1.OCIRepositoryRef) (ociRef, error) {
	if ref == nil {
		ref = &sourcev1.OCIRepositoryRef{}
	}
	tag := ref.Tag
	switch {
	case ref.Digest != "":
		h, err := gcrv1.NewHash(ref.Digest)
		if err != nil {
			return ociRef{}, fmt.Errorf("%w: digest '%s': %v", errInvalidRef, ref.Digest, err)
		}
		return ociRef{repo: repo, digest: h, display: repo.Digest(h.String()).String()}, nil
	case ref.SemVer != "":
		sel, err := newOCITagSelector(ref.SemVer, ref.SemverFilter)
		if err != nil {
			return ociRef{}, err
		}
		tags, err := remote.List(repo, o.opts...)
		if err != nil {
			return ociRef{}, fmt.Errorf("%w: %w", errOCIList, err)
		}
		if tag, err = sel.latest(tags); err != nil {
			return ociRef{}, fmt.Errorf("%w: %w", errOCIList, err)
		}
	case tag == "":
		tag = name.DefaultTag
	}
	t := repo.Tag(tag)
	desc, err := remote.Head(t, o.opts...)
	if err != nil {
		// Some registries answer HEAD badly; GET tells the truth.
		rdesc, gerr := remote.Get(t, o.opts...)
		if gerr != nil {
			return ociRef{}, gerr
		}
		desc = &rdesc.Descriptor
	}
	return ociRef{repo: repo, tag: tag, digest: desc.Digest, display: t.String()}, nil
}

// ociTagSelector picks the highest tag in a semver range, among the tags
// that match an optional regular expression (spec.ref.semverFilter).
type ociTagSelector struct {
	rng    string
	c      *semver.Constraints
	filter *regexp.Regexp
}

func newOCITagSelector(rng, filter string) (*ociTagSelector, error) {
	c, err := semver.NewConstraint(rng)
	if err != nil {
		return nil, fmt.Errorf("%w: semver '%s' parse error: %v", errInvalidRef, rng, err)
	}
	s := &ociTagSelector{rng: rng, c: c}
	if filter != "" {
		if s.filter, err = regexp.Compile(filter); err != nil {
			return nil, fmt.Errorf("%w: semverFilter '%s': %v", errInvalidRef, filter, err)
		}
	}
	return s, nil
}

// latest returns the highest matching tag. Tags parse as strict semver
// after an optional 'v', as Flux parses them; between tags of equal
// versions the greater string wins, so the choice is deterministic.
func (s *ociTagSelector) latest(tags []string) (string, error) {
	var (
		best    *semver.Version
		bestTag string
	)
	for _, tag := range tags {
		if s.filter != nil && !s.filter.MatchString(tag) {
			continue
		}
		v, err := semver.StrictNewVersion(strings.TrimPrefix(tag, "v"))
		if err != nil || !s.c.Check(v) {
			continue
		}
		if best == nil || v.GreaterThan(best) || (v.Equal(best) && tag > bestTag) {
			best, bestTag = v, tag
		}
	}
	if best == nil {
		return "", fmt.Errorf("no match found for semver: %s", s.rng)
	}
	return bestTag, nil
}

// ociKeychain resolves registry credentials from a docker-registry Secret.
type ociKeychain map[string]authn.AuthConfig

// Resolve returns the credentials of the resource's registry, or anonymous.
func (k ociKeychain) Resolve(res authn.Resource) (authn.Authenticator, error) {
	if c, ok := k[res.RegistryStr()]; ok {
		return authn.FromConfig(c), nil
	}
	return authn.Anonymous, nil
}

// ociDockerAuth is one entry of a Docker config's auths.
type ociDockerAuth struct {
	Username      string `json:"username"`
	Password      string `json:"password"`
	Auth          string `json:"auth"`
	IdentityToken string `json:"identitytoken"`
	RegistryToken string `json:"registrytoken"`
}

// ociKeychainFromSecret reads a kubernetes.io/dockerconfigjson Secret
// (.dockerconfigjson) or a legacy kubernetes.io/dockercfg one (.dockercfg).
// Keys may be host[:port], a URL, or a URL with a path, as docker login
// writes them.
func ociKeychainFromSecret(s *corev1.Secret) (ociKeychain, error) {
	var auths map[string]ociDockerAuth
	switch {
	case len(s.Data[corev1.DockerConfigJsonKey]) > 0:
		var cfg struct {
			Auths map[string]ociDockerAuth `json:"auths"`
		}
		if err := json.Unmarshal(s.Data[corev1.DockerConfigJsonKey], &cfg); err != nil {
			return nil, fmt.Errorf("secret '%s/%s': invalid %s: %w", s.Namespace, s.Name, corev1.DockerConfigJsonKey, err)
		}
		auths = cfg.Auths
	case len(s.Data[corev1.DockerConfigKey]) > 0:
		if err := json.Unmarshal(s.Data[corev1.DockerConfigKey], &auths); err != nil {
			return nil, fmt.Errorf("secret '%s/%s': invalid %s: %w", s.Namespace, s.Name, corev1.DockerConfigKey, err)
		}
	default:
		return nil, fmt.Errorf("secret '%s/%s' has no '%s' key: it must be of type %s",
			s.Namespace, s.Name, corev1.DockerConfigJsonKey, corev1.SecretTypeDockerConfigJson)
	}
	k := ociKeychain{}
	for key, a := range auths {
		c := authn.AuthConfig{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken}
		if a.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return nil, fmt.Errorf("secret '%s/%s': invalid auth for '%s': %w", s.Namespace, s.Name, key, err)
			}
			user, pass, ok := strings.Cut(string(raw), ":")
			if !ok {
				return nil, fmt.Errorf("secret '%s/%s': auth for '%s' is not 'user:password'", s.Namespace, s.Name, key)
			}
			if c.Username == "" {
				c.Username, c.Password = user, pass
			}
		}
		host := ociRegistryHost(key)
		k[host] = c
		if host == "docker.io" {
			k[name.DefaultRegistry] = c
		}
	}
	return k, nil
}

// ociRegistryHost is the host[:port] of a Docker config key.
func ociRegistryHost(key string) string {
	key = strings.TrimPrefix(strings.TrimPrefix(key, "https://"), "http://")
	host, _, _ := strings.Cut(key, "/")
	return host
}
