package git

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
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

// ErrGitHubApp: GitHub refused the app or its installation, or could not
// be asked (the token exchange failed).
var ErrGitHubApp = errors.New("github app token exchange failed")

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
}

// GitHubAppFromSecret reads a Flux GitHub App secret: githubAppID,
// githubAppPrivateKey (PEM, PKCS#1 or PKCS#8 RSA), exactly one of
// githubAppInstallationID and githubAppInstallationOwner, and the optional
// githubAppBaseURL and ca.crt. Missing or unusable data fails with
// ErrInvalidAuth.
func GitHubAppFromSecret(data map[string][]byte) (*GitHubApp, error) {
	app := &GitHubApp{
		InstallationOwner: string(data[KeyGitHubAppInstallationOwner]),
		APIURL:            strings.TrimSuffix(string(data[KeyGitHubAppBaseURL]), "/"),
		CABundle:          data["ca.crt"],
		keyPEM:            data[KeyGitHubAppPrivateKey],
	}
	var err error
	if app.AppID, err = strconv.ParseInt(string(data[KeyGitHubAppID]), 10, 64); err != nil || app.AppID <= 0 {
		return nil, fmt.Errorf("%w: app ID must be provided to use github app authentication ('%s' is '%s')", ErrInvalidAuth, KeyGitHubAppID, data[KeyGitHubAppID])
	}
	if id := data[KeyGitHubAppInstallationID]; len(id) > 0 {
		if app.InstallationID, err = strconv.ParseInt(string(id), 10, 64); err != nil || app.InstallationID <= 0 {
			return nil, fmt.Errorf("%w: '%s' is not a number: '%s'", ErrInvalidAuth, KeyGitHubAppInstallationID, id)
		}
	}
	switch {
	case app.InstallationID == 0 && app.InstallationOwner == "":
		return nil, fmt.Errorf("%w: app installation owner or ID must be provided to use github app authentication", ErrInvalidAuth)
	case app.InstallationID != 0 && app.InstallationOwner != "":
		return nil, fmt.Errorf("%w: only one of app installation owner or ID must be provided to use github app authentication", ErrInvalidAuth)
	}
	if len(app.keyPEM) == 0 {
		return nil, fmt.Errorf("%w: private key must be provided to use github app authentication", ErrInvalidAuth)
	}
	if app.key, err = parseRSAKey(app.keyPEM); err != nil {
		return nil, fmt.Errorf("%w: could not parse private key: %w", ErrInvalidAuth, err)
	}
	if app.APIURL == "" {
		app.APIURL = DefaultGitHubAPIURL
	}
	if u, err := url.Parse(app.APIURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("%w: '%s' must be an http(s) URL: '%s'", ErrInvalidAuth, KeyGitHubAppBaseURL, app.APIURL)
	}
	return app, nil
}

func parseRSAKey(p []byte) (*rsa.PrivateKey, error) {
	block, _ := pem.Decode(p)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key is a %T, want RSA", k)
	}
	return rk, nil
}

// GitHubAppTokens exchanges app credentials for installation tokens and
// caches each until 80% of its lifetime has passed, as Flux's token cache
// does, so reconciles do not ask GitHub every time. It is safe for
// concurrent use; the zero value is ready.
type GitHubAppTokens struct {
	mu     sync.Mutex
	tokens map[string]cachedToken
}

type cachedToken struct {
	token   string
	renewAt time.Time
}

// maxCachedTokens bounds the cache (Flux's default --token-cache-max-size).
const maxCachedTokens = 100

// Auth is the auth of Git over HTTP(S) as app's installation: basic auth
// with an installation token as the password, and app's CA bundle. proxy,
// when set, also carries the token exchange (as the Git fetch it is for).
// Failures wrap ErrGitHubApp.
func (c *GitHubAppTokens) Auth(ctx context.Context, app *GitHubApp, proxy *url.URL) (*Auth, error) {
	key := app.cacheKey()
	c.mu.Lock()
	cached, ok := c.tokens[key]
	c.mu.Unlock()
	if ok && time.Now().Before(cached.renewAt) {
		return app.auth(cached.token), nil
	}
	token, expires, err := app.exchange(ctx, proxy)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrGitHubApp, err)
	}
	now := time.Now()
	renewAt := now.Add(expires.Sub(now) * 8 / 10)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tokens == nil {
		c.tokens = map[string]cachedToken{}
	}
	if len(c.tokens) >= maxCachedTokens {
		c.evict(now)
	}
	c.tokens[key] = cachedToken{token: token, renewAt: renewAt}
	return app.auth(token), nil
}

// evict drops the renewable tokens, or else the one renewed soonest.
func (c *GitHubAppTokens) evict(now time.Time) {
	var soonest string
	for k, t := range c.tokens {
		if !now.Before(t.renewAt) {
			delete(c.tokens, k)
			continue
		}
		if soonest == "" || t.renewAt.Before(c.tokens[soonest].renewAt) {
			soonest = k
		}
	}
	if len(c.tokens) >= maxCachedTokens {
		delete(c.tokens, soonest)
	}
}

func (app *GitHubApp) auth(token string) *Auth {
	return &Auth{method: &githttp.BasicAuth{Username: GitHubAccessTokenUsername, Password: token}, caBundle: app.CABundle}
}

// cacheKey names the app, installation, API and key: a changed secret
// is a new entry.
func (app *GitHubApp) cacheKey() string {
	h := sha256.New()
	fmt.Fprintf(h, "%d\x00%d\x00%s\x00%s\x00", app.AppID, app.InstallationID, app.InstallationOwner, app.APIURL)
	h.Write(app.keyPEM)
	return hex.EncodeToString(h.Sum(nil))
}

// exchange asks the API for an installation token, authenticated by a
// short-lived JWT the app's key signs.
func (app *GitHubApp) exchange(ctx context.Context, proxy *url.URL) (string, time.Time, error) {
	jwt, err := app.jwt(time.Now())
	if err != nil {
		return "", time.Time{}, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if len(app.CABundle) > 0 {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(app.CABundle) {
			return "", time.Time{}, errors.New("ca.crt holds no PEM certificate")
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	if proxy != nil {
		// http.ProxyURL proxies every host: the environment's rules would
		// skip loopback and NO_PROXY hosts.
		tr.Proxy = http.ProxyURL(proxy)
	}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}

	id := app.InstallationID
	if id == 0 {
		if id, err = app.findInstallation(ctx, hc, jwt); err != nil {
			return "", time.Time{}, err
		}
	}
	var tok struct {
		Token     string    `json:"token"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	if err := app.call(ctx, hc, jwt, http.MethodPost, fmt.Sprintf("/app/installations/%d/access_tokens", id), http.StatusCreated, &tok); err != nil {
		return "", time.Time{}, err
	}
	if tok.Token == "" {
		return "", time.Time{}, errors.New("the API returned an empty installation token")
	}
	if tok.ExpiresAt.IsZero() {
		// GitHub's tokens last an hour; an answer without expiry is
		// renewed as if it were one.
		tok.ExpiresAt = time.Now().Add(time.Hour)
	}
	return tok.Token, tok.ExpiresAt, nil
}

// findInstallation looks the owner's installation up as an organization,
// then as a user.
func (app *GitHubApp) findInstallation(ctx context.Context, hc *http.Client, jwt string) (int64, error) {
	var errs []error
	for _, kind := range []string{"orgs", "users"} {
		var inst struct {
			ID int64 `json:"id"`
		}
		err := app.call(ctx, hc, jwt, http.MethodGet, "/"+kind+"/"+url.PathEscape(app.InstallationOwner)+"/installation", http.StatusOK, &inst)
		if err == nil && inst.ID > 0 {
			return inst.ID, nil
		}
		if err == nil {
			err = errors.New("no installation ID in the answer")
		}
		errs = append(errs, fmt.Errorf("find %s installation of '%s': %w", strings.TrimSuffix(kind, "s"), app.InstallationOwner, err))
	}
	return 0, errors.Join(errs...)
}

// call sends one API request and decodes its JSON answer into out.
func (app *GitHubApp) call(ctx context.Context, hc *http.Client, jwt, method, path string, want int, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, app.APIURL+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+jwt)
	req.Header.Set("Accept", "application/vnd.github+json")
	req.Header.Set("X-GitHub-Api-Version", "2022-11-28")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, req.URL, err)
	}
	if resp.StatusCode != want {
		var msg struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(body, &msg) != nil || msg.Message == "" {
			msg.Message = strings.TrimSpace(string(body))
		}
		return fmt.Errorf("%s %s: %d %s", method, req.URL, resp.StatusCode, msg.Message)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, req.URL, err)
	}
	return nil
}

// jwt is the app's RS256 JWT: issued 30 s in the past against clock
// drift, valid two minutes (it only buys a token), issuer the app ID.
func (app *GitHubApp) jwt(now time.Time) (string, error) {
	iat := now.Truncate(time.Second).Add(-30 * time.Second)
	header := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"RS256","typ":"JWT"}`))
	claims, err := json.Marshal(map[string]any{
		"iat": iat.Unix(), "exp": iat.Add(2 * time.Minute).Unix(), "iss": strconv.FormatInt(app.AppID, 10),
	})
	if err != nil {
		return "", err
	}
	signed := header + "." + base64.RawURLEncoding.EncodeToString(claims)
	digest := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(nil, app.key, crypto.SHA256, digest[:])
	if err != nil {
		return "", fmt.Errorf("sign app JWT: %w", err)
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}
