package helm

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/Masterminds/semver/v3"
	"github.com/google/go-containerregistry/pkg/authn"
	"helm.sh/helm/v3/pkg/registry"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/errcode"

	"github.com/sourceraft/sourceraft/sources/oci/verify"
)

// The errors pulling a chart from a registry fails with, besides
// ErrInvalidURL and ErrTooLarge; each is wrapped with what was wrong.
var (
	// ErrAuthentication: the registry refused the credentials (401, 403),
	// or the TLS handshake failed (unknown certificate authority, client
	// certificate refused). Flux reports both as AuthenticationFailed.
	ErrAuthentication = errors.New("authentication failed")
	// ErrNotChart: the manifest is not a Helm chart's (a container
	// image, a Flux artifact).
	ErrNotChart = errors.New("not a Helm chart")
)

// OCIOptions say how to reach a registry of charts.
type OCIOptions struct {
	// Username and Password authenticate to the registry's host, and to
	// no other (a token service elsewhere gets them only through the
	// registry's challenge); sent only when both are set.
	Username, Password string
	// TLS, when set, is the client's TLS configuration.
	TLS *tls.Config
	// PlainHTTP talks HTTP instead of HTTPS (Flux's spec.insecure).
	PlainHTTP bool
	// Timeout bounds each request; zero is none.
	Timeout time.Duration
}

// OCIClient pulls charts from the repositories under one oci:// URL with
// Helm's registry client, as Flux does for an oci HelmRepository: the
// chart <name> is the repository <url>/<name>, its versions its tags.
type OCIClient struct {
	// base is <host>/<path>, without scheme or trailing slash.
	base string
	host string
	o    OCIOptions
	tr   *http.Transport
}

// ParseOCIURL accepts the URL of a registry of charts,
// oci://<host>[/<path>], and returns it without a trailing slash, as
// Flux normalises it to match a dependency's repository with a
// HelmRepository; anything else fails with ErrInvalidURL.
func ParseOCIURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidURL, err)
	}
	if u.Scheme != registry.OCIScheme {
		return nil, fmt.Errorf("%w '%s': an oci HelmRepository's URL must start with 'oci://'", ErrInvalidURL, raw)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%w '%s': want oci://<host>[/<path>]", ErrInvalidURL, raw)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = strings.TrimRight(u.RawPath, "/")
	return u, nil
}

// NewOCIClient is the client of the charts under u (from ParseOCIURL).
func NewOCIClient(u *url.URL, o OCIOptions) *OCIClient {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = o.TLS
	return &OCIClient{base: u.Host + u.Path, host: u.Host, o: o, tr: tr}
}

// Close releases the client's idle connections.
func (c *OCIClient) Close() {
	c.tr.CloseIdleConnections()
}

// RepositoryURL is the repository of chart name, oci://<host>/<path>/<name>.
func (c *OCIClient) RepositoryURL(name string) string {
	return registry.OCIScheme + "://" + c.base + "/" + name
}

// registryClient is a Helm registry client bound to ctx (Helm's client
// takes no context) whose every response body is limited to max bytes
// when max is positive, so that a pull stops at the size limit instead
// of buffering a whole oversized layer.
func (c *OCIClient) registryClient(ctx context.Context, max int64) (*registry.Client, error) {
	hc := &http.Client{Transport: &boundTransport{ctx: ctx, max: max, next: c.tr}, Timeout: c.o.Timeout}
	authorizer := auth.Client{
		Client: hc,
		Header: http.Header{"User-Agent": {userAgent}},
		Cache:  auth.NewCache(),
		Credential: func(_ context.Context, hostport string) (auth.Credential, error) {
			if hostport != c.host || c.o.Username == "" || c.o.Password == "" {
				return auth.EmptyCredential, nil
			}
			return auth.Credential{Username: c.o.Username, Password: c.o.Password}, nil
		},
	}
	opts := []registry.ClientOption{registry.ClientOptWriter(io.Discard), registry.ClientOptAuthorizer(authorizer)}
	if c.o.PlainHTTP {
		opts = append(opts, registry.ClientOptPlainHTTP())
	}
	return registry.NewClient(opts...)
}

// ResolveVersion is the tag of chart name that version selects, with
// Flux's rules: an exact version (major.minor.patch, an optional v and
// pre-release or build metadata) is the tag itself, unlisted; anything
// else is a SemVer range, empty or "*" the latest stable version, that
// the newest of the chart's SemVer tags matching it satisfies. Tags that
// are not SemVer are never selected; a tag's '_' reads as '+', the build
// metadata separator OCI tags cannot hold.
func (c *OCIClient) ResolveVersion(ctx context.Context, name, version string) (string, error) {
	if isExactVersion(version) {
		return version, nil
	}
	rangeStr := version
	if rangeStr == "" {
		rangeStr = "*"
	}
	constraint, err := semver.NewConstraint(rangeStr)
	if err != nil {
		return "", fmt.Errorf("version '%s' is neither a SemVer version nor a range, and only SemVer tags are pulled: %w", version, err)
	}
	rc, err := c.registryClient(ctx, 0)
	if err != nil {
		return "", fmt.Errorf("failed to construct Helm registry client: %w", err)
	}
	// Helm's Tags keeps the SemVer tags only, '_' read as '+', newest first.
	tags, err := rc.Tags(c.base + "/" + name)
	if err != nil {
		return "", fmt.Errorf("could not get tags for '%s': %w", c.RepositoryURL(name), classifyOCIError(err))
	}
	if len(tags) == 0 {
		return "", fmt.Errorf("no SemVer tags for chart '%s' in '%s'", name, registry.OCIScheme+"://"+c.base)
	}
	for _, tag := range tags {
		if v, err := semver.NewVersion(tag); err == nil && constraint.Check(v) {
			return tag, nil
		}
	}
	return "", fmt.Errorf("no '%s' chart with version matching '%s' found", name, rangeStr)
}

// isExactVersion reports whether version names one version rather than
// a range, as Flux decides: three dot-separated parts that parse as
// SemVer (a leading v allowed).
func isExactVersion(version string) bool {
	if len(strings.SplitN(version, ".", 3)) != 3 {
		return false
	}
	_, err := semver.NewVersion(version)
	return err == nil
}

// Registry is how a signature verifier reaches the client's registry:
// its credentials (for its host only), TLS and scheme.
func (c *OCIClient) Registry() verify.Registry {
	reg := verify.Registry{Transport: c.tr, PlainHTTP: c.o.PlainHTTP}
	if c.o.Username != "" && c.o.Password != "" {
		reg.Keychain = hostKeychain{host: c.host, auth: authn.FromConfig(authn.AuthConfig{Username: c.o.Username, Password: c.o.Password})}
	}
	return reg
}

// hostKeychain authenticates to one registry host, anonymous elsewhere.
type hostKeychain struct {
	host string
	auth authn.Authenticator
}

func (k hostKeychain) Resolve(res authn.Resource) (authn.Authenticator, error) {
	if res.RegistryStr() == k.host {
		return k.auth, nil
	}
	return authn.Anonymous, nil
}

// Verify checks the signatures of chart name at tag with v and returns
// the manifest digest it verified, which the pull must then get.
func (c *OCIClient) Verify(ctx context.Context, v verify.Verifier, name, tag string) (verify.Result, string, error) {
	reg := c.Registry()
	// OCI tags cannot hold '+': Helm pushes it as '_'.
	ref, err := reg.Digest(ctx, c.base+"/"+name+":"+strings.ReplaceAll(tag, "+", "_"))
	if err != nil {
		return 0, "", err
	}
	res, err := v.Verify(ctx, ref)
	if err != nil {
		return 0, "", err
	}
	return res, ref.DigestStr(), nil
}

// Pull downloads the chart layer of chart name at tag (a '+' in it is
// pushed as '_', as Helm does) into a new temporary file in dir, stopping
// with ErrTooLarge past max bytes, and returns its path. A manifest that
// is not a chart's fails with ErrNotChart; when digest is set, a manifest
// of another digest (the tag moved since it was verified) fails too.
func (c *OCIClient) Pull(ctx context.Context, name, tag, digest, dir string, max int64) (string, error) {
	rc, err := c.registryClient(ctx, max)
	if err != nil {
		return "", fmt.Errorf("failed to construct Helm registry client: %w", err)
	}
	ref := c.RepositoryURL(name) + ":" + tag
	res, err := rc.Pull(strings.TrimPrefix(ref, registry.OCIScheme+"://"), registry.PullOptWithChart(true))
	if err != nil {
		return "", fmt.Errorf("failed to get '%s': %w", ref, classifyOCIError(err))
	}
	if digest != "" && res.Manifest.Digest != digest {
		return "", fmt.Errorf("'%s' is manifest %s, not the verified %s", ref, res.Manifest.Digest, digest)
	}
	f, err := os.CreateTemp(dir, "chart-*.tgz")
	if err != nil {
		return "", err
	}
	_, err = f.Write(res.Chart.Data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// classifyOCIError marks a registry failure with ErrAuthentication or
// ErrNotChart when it is one. Helm's Pull reports a manifest without a
// chart config or layer only in words, which are matched here.
func classifyOCIError(err error) error {
	var resp *errcode.ErrorResponse
	if errors.Is(err, auth.ErrBasicCredentialNotFound) ||
		errors.As(err, &resp) && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) {
		return fmt.Errorf("%w: %w", ErrAuthentication, err)
	}
	var (
		certErr *tls.CertificateVerificationError
		unknown x509.UnknownAuthorityError
		host    x509.HostnameError
		op      *net.OpError
	)
	// A TLS alert from the server (a client certificate required or
	// refused) is a net.OpError "remote error".
	if errors.As(err, &certErr) || errors.As(err, &unknown) || errors.As(err, &host) ||
		errors.As(err, &op) && op.Op == "remote error" {
		return fmt.Errorf("%w: TLS: %w", ErrAuthentication, err)
	}
	if msg := err.Error(); strings.Contains(msg, "manifest does not contain") || strings.Contains(msg, "could not load config with mediatype") {
		return fmt.Errorf("%w (want config media type %s and a layer of %s): %w", ErrNotChart, registry.ConfigMediaType, registry.ChartLayerMediaType, err)
	}
	return err
}

// boundTransport sends every request under ctx and, when max is
// positive, fails a response over max bytes with ErrTooLarge: up front
// by its Content-Length, else when its body reaches max+1 bytes.
type boundTransport struct {
	ctx  context.Context
	max  int64
	next http.RoundTripper
}

func (t *boundTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req.WithContext(t.ctx))
	if err != nil || t.max <= 0 {
		return resp, err
	}
	if resp.ContentLength > t.max {
		resp.Body.Close()
		return nil, fmt.Errorf("response of %d bytes %w of %d bytes", resp.ContentLength, ErrTooLarge, t.max)
	}
	resp.Body = &limitedBody{rc: resp.Body, left: t.max, max: t.max}
	return resp, nil
}

// limitedBody fails with ErrTooLarge once more than max bytes were read.
type limitedBody struct {
	rc   io.ReadCloser
	left int64
	max  int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	if b.left < 0 {
		return n, fmt.Errorf("response %w of %d bytes", ErrTooLarge, b.max)
	}
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }

// chartNamePattern is the chart names Flux accepts in a remote reference.
var chartNamePattern = regexp.MustCompile(`^([-a-z0-9]+/?\.?)+$`)

// BuildFromOCI resolves the chart version from the registry's tags (see
// ResolveVersion), verifies its signatures when o.Verifier is set (at
// every build, stored or not, as Flux does), pulls the chart with c and,
// when values files are set,
// merges them and repackages it. The build is named after o.Chart, as
// Flux names it. Failures are *BuildError; b is returned as far as it
// got, so the caller can report the version it was building.
func BuildFromOCI(ctx context.Context, c *OCIClient, o RemoteBuildOptions) (*Build, error) {
	if !chartNamePattern.MatchString(o.Chart) {
		return nil, buildErr(ReasonChartReference, "invalid chart name '%s': a valid name must be lower case letters and numbers and MAY be separated with dashes (-), slashes (/) or periods (.)", o.Chart)
	}
	tag, err := c.ResolveVersion(ctx, o.Chart, o.Version)
	if err != nil {
		return nil, buildErr(ReasonChartPull, "failed to get chart version for remote reference: %w", err)
	}
	var (
		verified verify.Result
		digest   string
	)
	if o.Verifier != nil {
		if verified, digest, err = c.Verify(ctx, o.Verifier, o.Chart, tag); err != nil {
			return nil, buildErr(ReasonChartVerification, "chart verification error: failed to verify %s:%s: %w", c.RepositoryURL(o.Chart), tag, err)
		}
	}
	b, err := newRemoteBuild(o.Chart, tag, o.BuildOptions, o.VersionMetadata)
	if b != nil {
		b.Verified = verified == verify.Verified
	}
	if err != nil || b.UpToDate {
		return b, err
	}
	file, err := c.Pull(ctx, o.Chart, tag, digest, o.Dir, o.MaxSize)
	if err != nil {
		return b, buildErr(ReasonChartPull, "failed to download chart for remote reference: %w", err)
	}
	return finishRemoteBuild(b, file, o.BuildOptions)
}
