package git

import (
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/bradleyfalzon/ghinstallation/v2"
	"github.com/fluxcd/pkg/cache"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	"github.com/golang-jwt/jwt/v4"
	"github.com/google/go-github/v88/github"
)

// The keys of a Flux GitHub App secret (GitRepository spec.provider
// github), and the username an installation token authenticates Git as.
const (
	KeyGitHubAppID                = "githubAppID"
	KeyGitHubAppInstallationID    = "githubAppInstallationID"
	KeyGitHubAppInstallationOwner = "githubAppInstallationOwner"
	KeyGitHubAppPrivateKey        = "githubAppPrivateKey"
	KeyGitHubAppBaseURL           = "githubAppBaseURL"
	GitHubAccessTokenUsername     = "x-access-token"
)

// DefaultGitHubAPIURL is the API of github.com, used when the secret
// names no githubAppBaseURL.
const DefaultGitHubAPIURL = "https://api.github.com"

// GitHubApp is a GitHub App installation whose access tokens authenticate
// HTTPS Git.
type GitHubApp struct {
	AppID int64
	// Exactly one of InstallationID and InstallationOwner is set; an owner
	// is looked up as an organization, then as a user.
	InstallationID    int64
	InstallationOwner string
	key               *rsa.PrivateKey
	keyPEM            []byte
	// APIURL is the API base URL, DefaultGitHubAPIURL or a GitHub
	// Enterprise Server's https://HOST/api/v3, used as it is.
	APIURL string
	// CABundle, when set, is trusted besides the system roots for the API
	// and for Git over HTTPS (a GitHub Enterprise Server's private CA).
	CABundle []byte
	// tlsConfig trusts CABundle for the API; nil is the system roots.
	tlsConfig *tls.Config
}

// GitHubAppFromSecret reads a Flux GitHub App secret: githubAppID,
// githubAppPrivateKey (PEM RSA), exactly one of githubAppInstallationID
// and githubAppInstallationOwner, and the optional githubAppBaseURL and
// ca.crt. It reads and checks them as Flux's githubapp client does, with
// its messages (ca.crt's as Flux's secrets package): IDs that are not
// numbers read as absent.
func GitHubAppFromSecret(data map[string][]byte) (*GitHubApp, error) {
	app := &GitHubApp{
		InstallationOwner: string(data[KeyGitHubAppInstallationOwner]),
		APIURL:            strings.TrimSuffix(string(data[KeyGitHubAppBaseURL]), "/"),
		CABundle:          data["ca.crt"],
		keyPEM:            data[KeyGitHubAppPrivateKey],
	}
	app.AppID, _ = strconv.ParseInt(string(data[KeyGitHubAppID]), 10, 64)
	app.InstallationID, _ = strconv.ParseInt(string(data[KeyGitHubAppInstallationID]), 10, 64)
	switch {
	case app.AppID == 0:
		return nil, errors.New("app ID must be provided to use github app authentication")
	case app.InstallationID == 0 && app.InstallationOwner == "":
		return nil, errors.New("app installation owner or ID must be provided to use github app authentication")
	case app.InstallationID != 0 && app.InstallationOwner != "":
		return nil, errors.New("only one of app installation owner or ID must be provided to use github app authentication")
	case len(app.keyPEM) == 0:
		return nil, errors.New("private key must be provided to use github app authentication")
	}
	// The parser ghinstallation and Flux's client use: PKCS#1 or PKCS#8.
	var err error
	if app.key, err = jwt.ParseRSAPrivateKeyFromPEM(app.keyPEM); err != nil {
		return nil, fmt.Errorf("could not parse private key: %w", err)
	}
	if app.APIURL == "" {
		app.APIURL = DefaultGitHubAPIURL
	}
	if _, err := url.Parse(app.APIURL); err != nil {
		return nil, fmt.Errorf("invalid API URL: %w", err)
	}
	if len(app.CABundle) > 0 {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(app.CABundle) {
			return nil, errors.New("failed to parse CA certificate")
		}
		app.tlsConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return app, nil
}

// GitHubAppTokens exchanges app credentials for installation tokens.
// With a Cache (Flux's token cache, shared with the cloud providers'
// tokens) they are kept and renewed at 80% of their lifetime, so
// reconciles do not ask GitHub every time; without one every call
// exchanges. It is safe for concurrent use.
type GitHubAppTokens struct {
	Cache *cache.TokenCache
}

// installationToken is an installation access token as the cache keeps it.
type installationToken struct {
	token     string
	expiresAt time.Time
}

// GetDuration is how long the token remains valid (cache.Token).
func (t *installationToken) GetDuration() time.Duration { return time.Until(t.expiresAt) }

// Auth is the auth of Git over HTTP(S) as app's installation: basic auth
// with an installation token as the password, and app's CA bundle. proxy,
// when set, also carries the token exchange (as the Git fetch it is for).
// Failures carry the GitHub API's messages, as Flux's do.
func (c GitHubAppTokens) Auth(ctx context.Context, app *GitHubApp, proxy *url.URL) (*Auth, error) {
	var tok *installationToken
	if c.Cache == nil {
		var err error
		if tok, err = app.exchange(ctx, proxy); err != nil {
			return nil, err
		}
	} else {
		t, _, err := c.Cache.GetOrSet(ctx, app.cacheKey(), func(ctx context.Context) (cache.Token, error) {
			return app.exchange(ctx, proxy)
		})
		if err != nil {
			return nil, err
		}
		tok = t.(*installationToken)
	}
	return &Auth{
		method:   &githttp.BasicAuth{Username: GitHubAccessTokenUsername, Password: tok.token},
		caBundle: app.CABundle,
	}, nil
}

// cacheKey names the app, installation, API and key: a changed secret
// is a new entry.
func (app *GitHubApp) cacheKey() string {
	h := sha256.New()
	fmt.Fprintf(h, "%d\x00%d\x00%s\x00%s\x00", app.AppID, app.InstallationID, app.InstallationOwner, app.APIURL)
	h.Write(app.keyPEM)
	return hex.EncodeToString(h.Sum(nil))
}

// exchange asks the API for an installation token: ghinstallation signs
// each request with the app's JWT, go-github makes the calls.
func (app *GitHubApp) exchange(ctx context.Context, proxy *url.URL) (*installationToken, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if app.tlsConfig != nil {
		tr.TLSClientConfig = app.tlsConfig
	}
	if proxy != nil {
		// http.ProxyURL proxies every host, loopback included; Flux's
		// client (golang.org/x/net/http/httpproxy) skips loopback hosts.
		tr.Proxy = http.ProxyURL(proxy)
	}
	defer tr.CloseIdleConnections()
	gh, err := github.NewClient(
		github.WithHTTPClient(&http.Client{Transport: ghinstallation.NewAppsTransportFromPrivateKey(tr, app.AppID, app.key)}),
		github.WithTimeout(30*time.Second),
		// The API URL as it is, not as go-github's enterprise URL rules
		// would rewrite it.
		github.WithURLs(&app.APIURL, nil))
	if err != nil {
		return nil, fmt.Errorf("invalid API URL: %w", err)
	}
	id := app.InstallationID
	if id == 0 {
		if id, err = app.findInstallation(ctx, gh); err != nil {
			return nil, err
		}
	}
	tok, _, err := gh.Apps.CreateInstallationToken(ctx, id, nil)
	if err != nil {
		return nil, err
	}
	return &installationToken{token: tok.GetToken(), expiresAt: tok.GetExpiresAt().Time}, nil
}

// findInstallation looks the owner's installation up as an organization,
// then as a user, failing with Flux's messages.
func (app *GitHubApp) findInstallation(ctx context.Context, gh *github.Client) (int64, error) {
	inst, _, orgErr := gh.Apps.GetOrganizationInstallation(ctx, app.InstallationOwner)
	if orgErr == nil {
		return inst.GetID(), nil
	}
	inst, _, userErr := gh.Apps.GetUserInstallation(ctx, app.InstallationOwner)
	if userErr == nil {
		return inst.GetID(), nil
	}
	return 0, errors.Join(fmt.Errorf("failed to find organization installation: %w", orgErr),
		fmt.Errorf("failed to find user installation: %w", userErr))
}
