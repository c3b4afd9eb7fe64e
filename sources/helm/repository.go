// Package helm fetches Helm repository indexes and charts over HTTP(S),
// pulls charts from OCI registries with Helm's registry client (oci.go),
// and builds charts the way Flux's HelmRepository and HelmChart do:
// streamed downloads within size limits, indexes read as Helm's loader
// reads them but one chart at a time (index.go), versions with build
// metadata, merged values files, local and remote dependencies and
// deterministic packages. It knows Helm and nothing of Kubernetes:
// credentials and TLS come in as options, and failures carry a
// BuildErrorReason (or the errors below) the caller maps to conditions.
package helm

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// Flux's --helm-* defaults.
const (
	// DefaultIndexMaxSize is Flux's --helm-index-max-size.
	DefaultIndexMaxSize int64 = 50 << 20
	// DefaultChartMaxSize is Flux's --helm-chart-max-size.
	DefaultChartMaxSize int64 = 10 << 20
)

// userAgent is sent with every request to a Helm repository.
const userAgent = "sourceraft/source-controller (helm)"

// The errors fetching fails with, for errors.Is; each is wrapped with
// what was wrong.
var (
	// ErrInvalidURL: the URL is not that of an HTTP(S) repository.
	ErrInvalidURL = errors.New("invalid Helm repository URL")
	// ErrTooLarge: a download was cut off at its size limit.
	ErrTooLarge = errors.New("exceeds the maximum size")
)

// Limits are the --helm-* bounds, zero meaning Flux's default.
type Limits struct {
	IndexMaxSize int64
	ChartMaxSize int64
}

// Index is the effective index size limit.
func (l Limits) Index() int64 {
	if l.IndexMaxSize > 0 {
		return l.IndexMaxSize
	}
	return DefaultIndexMaxSize
}

// Chart is the effective chart size limit.
func (l Limits) Chart() int64 {
	if l.ChartMaxSize > 0 {
		return l.ChartMaxSize
	}
	return DefaultChartMaxSize
}

// ParseRepositoryURL accepts the URL of an HTTP(S) Helm repository and
// returns it with a trailing slash, the base charts are resolved against.
// Anything else fails with ErrInvalidURL.
func ParseRepositoryURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidURL, err)
	}
	switch u.Scheme {
	case "http", "https":
	case "oci":
		return nil, fmt.Errorf("%w: 'oci' URL scheme cannot be used with 'default' HelmRepository type", ErrInvalidURL)
	default:
		return nil, fmt.Errorf("%w '%s': unsupported scheme '%s'", ErrInvalidURL, raw, u.Scheme)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("%w '%s': no host", ErrInvalidURL, raw)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/"
	if u.RawPath != "" {
		u.RawPath = strings.TrimSuffix(u.RawPath, "/") + "/"
	}
	return u, nil
}

// ClientOptions say how to talk to a repository.
type ClientOptions struct {
	// Username and Password are basic auth, sent only when both are set.
	Username, Password string
	// PassCredentials sends basic auth to other hosts than the
	// repository's too (charts served from elsewhere), as Helm's
	// --pass-credentials.
	PassCredentials bool
	// TLS, when set, is the client's TLS configuration.
	TLS *tls.Config
	// Timeout bounds each request; zero is none.
	Timeout time.Duration
}

// Client downloads from one HTTP(S) Helm repository. It follows Helm's
// HTTP getter: basic auth is only sent to the repository's own scheme and
// host unless PassCredentials is set. Unlike Helm's getter, it streams
// with a size limit instead of buffering whole responses.
type Client struct {
	base *url.URL
	o    ClientOptions
	http *http.Client
}

// NewClient is the client of the repository at base (from
// ParseRepositoryURL).
func NewClient(base *url.URL, o ClientOptions) *Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = o.TLS
	tr.DisableCompression = true
	return &Client{base: base, o: o, http: &http.Client{Transport: tr, Timeout: o.Timeout}}
}

// Close releases the client's idle connections.
func (c *Client) Close() {
	c.http.CloseIdleConnections()
}

// IndexURL is where the repository's index.yaml is.
func (c *Client) IndexURL() string {
	u := *c.base
	u.Path = path.Join(u.Path, "index.yaml")
	if u.RawPath != "" {
		u.RawPath = path.Join(u.RawPath, "index.yaml")
	}
	return u.String()
}

// fetch writes the body of a GET of href into w, failing with ErrTooLarge
// as soon as it is over max bytes, and returns the number of bytes
// written.
func (c *Client) fetch(ctx context.Context, href string, max int64, w io.Writer) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, href, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("User-Agent", userAgent)
	if c.o.Username != "" && c.o.Password != "" &&
		(c.o.PassCredentials || (req.URL.Scheme == c.base.Scheme && req.URL.Host == c.base.Host)) {
		req.SetBasicAuth(c.o.Username, c.o.Password)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("failed to fetch %s : %s", href, resp.Status)
	}
	if resp.ContentLength > max {
		return 0, fmt.Errorf("%s is %d bytes: %w of %d bytes", href, resp.ContentLength, ErrTooLarge, max)
	}
	n, err := io.Copy(w, io.LimitReader(resp.Body, max+1))
	if err != nil {
		return n, err
	}
	if n > max {
		return n, fmt.Errorf("%s %w of %d bytes", href, ErrTooLarge, max)
	}
	return n, nil
}

// FetchToFile downloads href into a new temporary file in dir (named
// after pattern, as os.CreateTemp), at most max bytes, returning its path
// and the <algo>:<hex> digest of its content.
func (c *Client) FetchToFile(ctx context.Context, href, dir, pattern string, max int64, algo digest.Algorithm) (string, string, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", "", err
	}
	d := algo.Digester()
	_, err = c.fetch(ctx, href, max, io.MultiWriter(f, d.Hash()))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", "", err
	}
	return f.Name(), d.Digest().String(), nil
}
