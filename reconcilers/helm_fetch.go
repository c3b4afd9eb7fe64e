package reconcilers

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"strings"
	"time"

	"github.com/fluxcd/pkg/runtime/secrets"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"helm.sh/helm/v3/pkg/repo"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Flux's --helm-* defaults.
const (
	// DefaultHelmIndexMaxSize is Flux's --helm-index-max-size.
	DefaultHelmIndexMaxSize int64 = 50 << 20
	// DefaultHelmChartMaxSize is Flux's --helm-chart-max-size.
	DefaultHelmChartMaxSize int64 = 10 << 20
)

// helmUserAgent is sent with every request to a Helm repository.
const helmUserAgent = "sourceraft/source-controller (helm)"

// errHelmTooLarge marks a download cut off at its size limit.
var errHelmTooLarge = errors.New("exceeds the maximum size")

// helmLimits are the --helm-* bounds, zero meaning Flux's default.
type helmLimits struct {
	IndexMaxSize int64
	ChartMaxSize int64
}

func (l helmLimits) index() int64 {
	if l.IndexMaxSize > 0 {
		return l.IndexMaxSize
	}
	return DefaultHelmIndexMaxSize
}

func (l helmLimits) chart() int64 {
	if l.ChartMaxSize > 0 {
		return l.ChartMaxSize
	}
	return DefaultHelmChartMaxSize
}

// helmRepoClient downloads from one HTTP(S) Helm repository with the
// credentials of its HelmRepository. It follows Helm's HTTP getter:
// basic auth is only sent to the repository's own scheme and host unless
// passCredentials is set. Unlike Helm's getter, it streams with a size
// limit instead of buffering whole responses.
type helmRepoClient struct {
	base            *url.URL
	username        string
	password        string
	passCredentials bool
	http            *http.Client
}

// parseHelmRepoURL accepts the URL of an HTTP(S) Helm repository and
// returns it with a trailing slash, the base charts are resolved against.
func parseHelmRepoURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("invalid Helm repository URL: %w", err)
	}
	switch u.Scheme {
	case "http", "https":
	case "oci":
		return nil, fmt.Errorf("invalid Helm repository URL: 'oci' URL scheme cannot be used with 'default' HelmRepository type")
	default:
		return nil, fmt.Errorf("invalid Helm repository URL '%s': unsupported scheme '%s'", raw, u.Scheme)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("invalid Helm repository URL '%s': no host", raw)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/"
	if u.RawPath != "" {
		u.RawPath = strings.TrimSuffix(u.RawPath, "/") + "/"
	}
	return u, nil
}

// newHelmRepoClient configures a client from the HelmRepository's
// secretRef (username and password) and certSecretRef (tls.crt, tls.key,
// ca.crt). A secret that cannot be read or parsed is an authentication
// failure.
func newHelmRepoClient(ctx context.Context, c client.Reader, obj *sourcev1.HelmRepository, base *url.URL) (*helmRepoClient, error) {
	hc := &helmRepoClient{base: base, passCredentials: obj.Spec.PassCredentials}
	var tlsConfig *tls.Config
	if ref := obj.Spec.SecretRef; ref != nil {
		secret, err := helmGetSecret(ctx, c, obj.Namespace, ref.Name)
		if err != nil {
			return nil, err
		}
		basic, err := secrets.BasicAuthFromSecret(ctx, secret)
		switch {
		case err == nil:
			hc.username, hc.password = basic.Username, basic.Password
		case !errors.Is(err, secrets.ErrKeyNotFound):
			return nil, fmt.Errorf("invalid basic auth in secret '%s/%s': %w", obj.Namespace, ref.Name, err)
		}
	}
	if ref := obj.Spec.CertSecretRef; ref != nil {
		secret, err := helmGetSecret(ctx, c, obj.Namespace, ref.Name)
		if err != nil {
			return nil, err
		}
		if tlsConfig, err = secrets.TLSConfigFromSecret(ctx, secret); err != nil {
			return nil, fmt.Errorf("invalid TLS data in secret '%s/%s': %w", obj.Namespace, ref.Name, err)
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConfig
	tr.DisableCompression = true
	hc.http = &http.Client{Transport: tr, Timeout: obj.GetTimeout()}
	return hc, nil
}

func helmGetSecret(ctx context.Context, c client.Reader, ns, name string) (*corev1.Secret, error) {
	secret := &corev1.Secret{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, secret); err != nil {
		return nil, fmt.Errorf("failed to get secret '%s/%s': %w", ns, name, err)
	}
	return secret, nil
}

// close releases the client's idle connections.
func (c *helmRepoClient) close() {
	c.http.CloseIdleConnections()
}

// indexURL is where the repository's index.yaml is.
func (c *helmRepoClient) indexURL() string {
	u := *c.base
	u.Path = path.Join(u.Path, "index.yaml")
	if u.RawPath != "" {
		u.RawPath = path.Join(u.RawPath, "index.yaml")
	}
	return u.String()
}

// fetch writes the body of a GET of href into w, failing with
// errHelmTooLarge as soon as it is over max bytes, and returns the number
// of bytes written.
func (c *helmRepoClient) fetch(ctx context.Context, href string, max int64, w io.Writer) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, href, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("User-Agent", helmUserAgent)
	if c.username != "" && c.password != "" &&
		(c.passCredentials || (req.URL.Scheme == c.base.Scheme && req.URL.Host == c.base.Host)) {
		req.SetBasicAuth(c.username, c.password)
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
		return 0, fmt.Errorf("%s is %d bytes: %w of %d bytes", href, resp.ContentLength, errHelmTooLarge, max)
	}
	n, err := io.Copy(w, io.LimitReader(resp.Body, max+1))
	if err != nil {
		return n, err
	}
	if n > max {
		return n, fmt.Errorf("%s %w of %d bytes", href, errHelmTooLarge, max)
	}
	return n, nil
}

// fetchToFile downloads href into a new temporary file in dir, returning
// its path and the sha256 of its content.
func (c *helmRepoClient) fetchToFile(ctx context.Context, href, dir, pattern string, max int64) (string, string, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", "", err
	}
	h := sha256.New()
	_, err = c.fetch(ctx, href, max, io.MultiWriter(f, h))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", "", err
	}
	return f.Name(), helmDigest(h), nil
}

func helmDigest(h hash.Hash) string {
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// helmLoadIndex loads and normalises a repository index with Helm's
// loader: invalid entries are dropped and the entries sorted, newest
// version first.
func helmLoadIndex(file string) (*repo.IndexFile, error) {
	idx, err := repo.LoadIndexFile(file)
	if err != nil {
		return nil, err
	}
	idx.SortEntries()
	return idx, nil
}

// helmTimeout is the HelmRepository's spec.timeout, Flux's default when unset.
func helmTimeout(obj *sourcev1.HelmRepository) time.Duration {
	if t := obj.GetTimeout(); t > 0 {
		return t
	}
	return time.Minute
}
