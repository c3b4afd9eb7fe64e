// Package oci pulls artifacts from OCI registries with
// go-containerregistry the way Flux's OCIRepository does: a repository
// URL, a reference resolved to a manifest digest (digest, semver range,
// tag), and the selected layer extracted or copied within size and entry
// limits. It knows registries and nothing of Kubernetes: credentials come
// in as Docker config bytes, TLS as a *tls.Config, and the errors below
// tell the caller which condition to set.
package oci

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	"github.com/Masterminds/semver/v3"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	gcrv1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/sourceraft/sourceraft/sources/oci/verify"
)

// URLPrefix starts every repository URL.
const URLPrefix = "oci://"

// The manifest annotations `flux push artifact` writes.
const (
	SourceAnnotation   = "org.opencontainers.image.source"
	RevisionAnnotation = "org.opencontainers.image.revision"
)

// The errors the client fails with, for errors.Is; each is wrapped with
// what was wrong. Other errors are the registry's answers.
var (
	// ErrInvalidURL: the URL does not name a repository.
	ErrInvalidURL = errors.New("invalid URL")
	// ErrInvalidReference: no pull can satisfy the reference (a bad
	// semver range or filter, a malformed digest).
	ErrInvalidReference = errors.New("invalid reference")
	// ErrListTags: the repository's tags could not be listed, or none
	// is in the semver range.
	ErrListTags = errors.New("list tags")
	// ErrInvalidAuth: the Docker config cannot be read.
	ErrInvalidAuth = errors.New("invalid credentials")
	// ErrLayer: the manifest has no usable layer, or the layer cannot be
	// extracted.
	ErrLayer = errors.New("layer operation failed")
)

// parseURL turns oci://<registry>/<repository> into the repository it
// names. A tag or digest in the URL is refused: the Reference selects
// those.
func parseURL(raw string, insecure bool) (name.Repository, error) {
	repo, err := parseRepository(raw, insecure)
	if err != nil {
		return name.Repository{}, fmt.Errorf("%w: %w", ErrInvalidURL, err)
	}
	return repo, nil
}

// RegistryHost is the registry (host[:port]) of a repository URL, as
// Credentials are keyed; an invalid URL fails with ErrInvalidURL.
func RegistryHost(url string) (string, error) {
	repo, err := parseURL(url, false)
	if err != nil {
		return "", err
	}
	return repo.RegistryStr(), nil
}

func parseRepository(raw string, insecure bool) (name.Repository, error) {
	if !strings.HasPrefix(raw, URLPrefix) {
		return name.Repository{}, errors.New("URL must be in format 'oci://<domain>/<org>/<repo>'")
	}
	s := strings.TrimPrefix(raw, URLPrefix)
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

// Options say how to reach a repository.
type Options struct {
	// Insecure allows plain HTTP and, without TLS, any certificate (as
	// Flux's spec.insecure does, for registries crane-style tooling
	// pushes to).
	Insecure bool
	// TLS, when set, is the client's TLS configuration (CA, client
	// certificate).
	TLS *tls.Config
	// Credentials authenticate per registry; nil is anonymous.
	Credentials Credentials
	// Proxy, when set, carries every request (token exchanges included)
	// through this HTTP(S) or SOCKS5 proxy, whatever the host: loopback
	// registries too, which the environment's proxy rules would skip.
	// User info in the URL is the proxy's basic auth.
	Proxy *url.URL
}

// Client talks to one repository within one context (its deadline
// bounds every request).
type Client struct {
	repo name.Repository
	opts []remote.Option
	// reg is how signatures of this repository are read (spec.verify).
	reg verify.Registry
}

// NewClient is the client of the repository at url (oci://<registry>/<repository>;
// anything else fails with ErrInvalidURL).
func NewClient(ctx context.Context, url string, o Options) (*Client, error) {
	repo, err := parseURL(url, o.Insecure)
	if err != nil {
		return nil, err
	}
	var keychain authn.Keychain = authn.NewMultiKeychain()
	if o.Credentials != nil {
		keychain = o.Credentials
	}
	base := remote.DefaultTransport.(*http.Transport).Clone()
	switch {
	case o.TLS != nil:
		base.TLSClientConfig = o.TLS
	case o.Insecure:
		base.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // asked for by Options.Insecure
	}
	if o.Proxy != nil {
		base.Proxy = http.ProxyURL(o.Proxy)
	}
	var transport http.RoundTripper = base
	if !o.Insecure {
		transport = httpsOnly{next: base}
	}
	return &Client{repo: repo, opts: []remote.Option{
		remote.WithContext(ctx),
		remote.WithTransport(transport),
		remote.WithAuthFromKeychain(keychain),
	}, reg: verify.Registry{Keychain: keychain, Transport: transport, PlainHTTP: o.Insecure}}, nil
}

// Verify checks the signatures of the manifest ref resolved to with v,
// reaching the registry as the pull does.
func (c *Client) Verify(ctx context.Context, v verify.Verifier, ref *Resolved) (verify.Result, error) {
	return v.Verify(ctx, ref.repo.Digest(ref.Digest))
}

// Registry is how a verifier reaches this client's registry.
func (c *Client) Registry() verify.Registry { return c.reg }

// httpsOnly refuses plain HTTP. go-containerregistry falls back to HTTP
// for loopback and private-network registries on its own; this client
// speaks plain HTTP only when Options.Insecure asks for it.
type httpsOnly struct{ next http.RoundTripper }

func (t httpsOnly) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" {
		return nil, fmt.Errorf("plain HTTP to %s refused: set spec.insecure to allow it", req.URL.Host)
	}
	return t.next.RoundTrip(req)
}

// Reference selects a manifest, with the fields and precedence of Flux's
// OCIRepository spec.ref: Digest, SemVer (with SemverFilter), Tag, then
// the 'latest' tag.
type Reference struct {
	Tag          string
	SemVer       string
	SemverFilter string
	Digest       string
}

// Resolved is a Reference resolved to a manifest digest.
type Resolved struct {
	repo name.Repository
	// Tag is the tag the digest was resolved from; empty for a digest
	// reference.
	Tag string
	// Digest is the manifest digest, sha256:<hex>.
	Digest string
	// Display is the reference as the user would write it, for messages.
	Display string
}

// Revision is Flux's: '<tag>@sha256:<hex>', or 'sha256:<hex>' for a
// digest reference.
func (r *Resolved) Revision() string {
	if r.Tag == "" {
		return r.Digest
	}
	return r.Tag + "@" + r.Digest
}

// Resolve turns ref into a manifest digest. A reference no pull can
// satisfy fails with ErrInvalidReference, a failed tag listing with
// ErrListTags.
func (c *Client) Resolve(ref Reference) (*Resolved, error) {
	repo := c.repo
	tag := ref.Tag
	switch {
	case ref.Digest != "":
		h, err := gcrv1.NewHash(ref.Digest)
		if err != nil {
			return nil, fmt.Errorf("%w: digest '%s': %v", ErrInvalidReference, ref.Digest, err)
		}
		return &Resolved{repo: repo, Digest: h.String(), Display: repo.Digest(h.String()).String()}, nil
	case ref.SemVer != "":
		sel, err := newTagSelector(ref.SemVer, ref.SemverFilter)
		if err != nil {
			return nil, err
		}
		tags, err := remote.List(repo, c.opts...)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrListTags, err)
		}
		if tag, err = sel.latest(tags); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrListTags, err)
		}
	case tag == "":
		tag = name.DefaultTag
	}
	t := repo.Tag(tag)
	desc, err := remote.Head(t, c.opts...)
	if err != nil {
		// Some registries answer HEAD badly; GET tells the truth.
		rdesc, gerr := remote.Get(t, c.opts...)
		if gerr != nil {
			return nil, gerr
		}
		desc = &rdesc.Descriptor
	}
	return &Resolved{repo: repo, Tag: tag, Digest: desc.Digest.String(), Display: t.String()}, nil
}

// tagSelector picks the highest tag in a semver range, among the tags
// that match an optional regular expression (spec.ref.semverFilter).
type tagSelector struct {
	rng    string
	c      *semver.Constraints
	filter *regexp.Regexp
}

func newTagSelector(rng, filter string) (*tagSelector, error) {
	c, err := semver.NewConstraint(rng)
	if err != nil {
		return nil, fmt.Errorf("%w: semver '%s' parse error: %v", ErrInvalidReference, rng, err)
	}
	s := &tagSelector{rng: rng, c: c}
	if filter != "" {
		if s.filter, err = regexp.Compile(filter); err != nil {
			return nil, fmt.Errorf("%w: semverFilter '%s': %v", ErrInvalidReference, filter, err)
		}
	}
	return s, nil
}

// latest returns the highest matching tag. Tags parse as strict semver
// after an optional 'v', as Flux parses them; between tags of equal
// versions the greater string wins, so the choice is deterministic.
func (s *tagSelector) latest(tags []string) (string, error) {
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
