package helm

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/Masterminds/semver/v3"
	"github.com/opencontainers/go-digest"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/repo"
)

// ChartFetcher downloads the charts a chart depends on from the
// repositories of one kind.
type ChartFetcher interface {
	// FetchChart downloads into dir the newest version of the chart name
	// that matches the SemVer constraint (empty: the newest stable one)
	// in the repository at repoURL, and returns the package's path.
	FetchChart(ctx context.Context, repoURL, name, constraint, dir string) (string, error)
}

// Dependencies are the ChartFetcher of each dependency repository URL
// scheme ("http", "https", "oci"). A dependency in a repository whose
// scheme has none fails the build.
type Dependencies map[string]ChartFetcher

// RepositoryOpener returns the client of the HTTP(S) repository at base
// (from ParseRepositoryURL) and, when one is at hand, its index; a nil
// index is fetched from the repository.
type RepositoryOpener func(ctx context.Context, base *url.URL) (*Client, *Index, error)

// AnonymousTimeout bounds the requests to a dependency repository opened
// without options, Flux's default HelmRepository timeout.
const AnonymousTimeout = time.Minute

// HTTPFetcher is the ChartFetcher of HTTP(S) repositories. It opens each
// repository once and keeps its index for the further charts of one
// build; it is not safe for concurrent use.
type HTTPFetcher struct {
	open   RepositoryOpener
	limits Limits
	repos  map[string]*httpRepository
}

type httpRepository struct {
	c   *Client
	idx *Index
}

// NewHTTPFetcher fetches from the repositories open returns (nil:
// anonymous clients), with indexes and charts bounded by limits.
func NewHTTPFetcher(open RepositoryOpener, limits Limits) *HTTPFetcher {
	if open == nil {
		open = func(_ context.Context, base *url.URL) (*Client, *Index, error) {
			return NewClient(base, ClientOptions{Timeout: AnonymousTimeout}), nil, nil
		}
	}
	return &HTTPFetcher{open: open, limits: limits, repos: map[string]*httpRepository{}}
}

// Close releases the clients of the repositories opened.
func (f *HTTPFetcher) Close() {
	for _, r := range f.repos {
		r.c.Close()
	}
}

// FetchChart resolves the chart version in the repository's index,
// fetched within the index size limit unless the opener gave one, and
// downloads the chart within the chart size limit.
func (f *HTTPFetcher) FetchChart(ctx context.Context, repoURL, name, constraint, dir string) (string, error) {
	base, err := ParseRepositoryURL(repoURL)
	if err != nil {
		return "", err
	}
	r, err := f.repository(ctx, base, dir)
	if err != nil {
		return "", err
	}
	cv, err := r.idx.Get(name, constraint)
	if err != nil {
		return "", noVersionErr(name, constraint, err)
	}
	return r.c.downloadChart(ctx, cv, dir, f.limits.Chart())
}

// repository opens the repository at base and loads its index, once.
func (f *HTTPFetcher) repository(ctx context.Context, base *url.URL, dir string) (*httpRepository, error) {
	if r, ok := f.repos[base.String()]; ok {
		return r, nil
	}
	c, idx, err := f.open(ctx, base)
	if err != nil {
		return nil, err
	}
	if idx == nil {
		if idx, err = c.fetchIndex(ctx, dir, f.limits.Index()); err != nil {
			c.Close()
			return nil, err
		}
	}
	r := &httpRepository{c: c, idx: idx}
	f.repos[base.String()] = r
	return r, nil
}

// OCIOpener returns the client of the registry of charts at u (from
// ParseOCIURL).
type OCIOpener func(ctx context.Context, u *url.URL) (*OCIClient, error)

// OCIFetcher is the ChartFetcher of oci:// repositories: the chart
// <name> of oci://<host>/<path> is the registry repository
// <host>/<path>/<name>, its versions its tags. It opens each registry
// URL once per build; it is not safe for concurrent use.
type OCIFetcher struct {
	open    OCIOpener
	limits  Limits
	clients map[string]*OCIClient
}

// NewOCIFetcher pulls from the registries open returns (nil: anonymous
// clients over HTTPS), with charts bounded by limits.
func NewOCIFetcher(open OCIOpener, limits Limits) *OCIFetcher {
	if open == nil {
		open = func(_ context.Context, u *url.URL) (*OCIClient, error) {
			return NewOCIClient(u, OCIOptions{Timeout: AnonymousTimeout}), nil
		}
	}
	return &OCIFetcher{open: open, limits: limits, clients: map[string]*OCIClient{}}
}

// Close releases the clients of the registries opened.
func (f *OCIFetcher) Close() {
	for _, c := range f.clients {
		c.Close()
	}
}

// FetchChart resolves the constraint against the chart's tags with
// Flux's rules (see ResolveVersion) and pulls that tag within the chart
// size limit.
func (f *OCIFetcher) FetchChart(ctx context.Context, repoURL, name, constraint, dir string) (string, error) {
	u, err := ParseOCIURL(repoURL)
	if err != nil {
		return "", err
	}
	c, ok := f.clients[u.String()]
	if !ok {
		if c, err = f.open(ctx, u); err != nil {
			return "", err
		}
		f.clients[u.String()] = c
	}
	tag, err := c.ResolveVersion(ctx, name, constraint)
	if err != nil {
		return "", err
	}
	return c.Pull(ctx, name, tag, "", dir, f.limits.Chart())
}

// fetchIndex downloads the repository's index.yaml, at most max bytes,
// and loads it.
func (c *Client) fetchIndex(ctx context.Context, dir string, max int64) (*Index, error) {
	file, _, err := c.FetchToFile(ctx, c.IndexURL(), dir, "index-*.yaml", max, digest.Canonical)
	if err != nil {
		return nil, fmt.Errorf("failed to fetch repository index: %w", err)
	}
	defer os.Remove(file)
	idx, err := LoadIndex(file)
	if err != nil {
		return nil, fmt.Errorf("failed to load repository index from %s: %w", c.IndexURL(), err)
	}
	return idx, nil
}

// downloadChart downloads the package of cv, at most max bytes, into a
// new file in dir.
func (c *Client) downloadChart(ctx context.Context, cv *ChartVersion, dir string, max int64) (string, error) {
	if len(cv.URLs) == 0 {
		return "", fmt.Errorf("chart '%s' has no downloadable URLs", cv.Name)
	}
	href, err := repo.ResolveReferenceURL(c.base.String(), cv.URLs[0])
	if err != nil {
		return "", fmt.Errorf("failed to resolve chart URL: %w", err)
	}
	file, _, err := c.FetchToFile(ctx, href, dir, "chart-*.tgz", max, digest.Canonical)
	return file, err
}

// addDependencies adds the chart's missing dependencies, as Flux's
// dependency manager does for a chart directory: file:// ones (and those
// without a repository, under charts/) loaded from the source tree,
// remote ones fetched with deps by the scheme of their repository URL.
// A dependency is missing when no subchart has its alias or name; the
// version is the Chart.lock's when it locks the dependency, else the
// Chart.yaml constraint. The dependencies are added one at a time in the
// Chart.yaml's order, so the same inputs make the same package.
// Dependencies of the dependencies are not resolved (Flux does not
// either): a package brings its own, a local subchart is taken as it is.
func addDependencies(ctx context.Context, ch *chart.Chart, chartDir, sourceDir string, deps Dependencies, dir string) error {
	have := map[string]bool{}
	for _, d := range ch.Dependencies() {
		have[d.Name()] = true
	}
	locked := map[[2]string]string{}
	if ch.Lock != nil {
		for _, d := range ch.Lock.Dependencies {
			locked[[2]string{d.Name, d.Repository}] = d.Version
		}
	}
	for _, dep := range ch.Metadata.Dependencies {
		name := dep.Name
		if dep.Alias != "" {
			name = dep.Alias
		}
		if have[name] {
			continue
		}
		constraint := dep.Version
		if v, ok := locked[[2]string{dep.Name, dep.Repository}]; ok {
			constraint = v
		}
		var sub *chart.Chart
		var err error
		if dep.Repository == "" || strings.HasPrefix(dep.Repository, "file://") {
			if sub, err = localDependency(dep, constraint, chartDir, sourceDir); err != nil {
				return fmt.Errorf("failed to add local dependency '%s': %w", name, err)
			}
		} else if sub, err = remoteDependency(ctx, dep, constraint, deps, dir); err != nil {
			return fmt.Errorf("failed to add remote dependency '%s': %w", name, err)
		}
		if dep.Alias != "" {
			sub.Metadata.Name = dep.Alias
		}
		ch.AddDependency(sub)
		have[name] = true
	}
	return nil
}

// localDependency loads a dependency from the source tree: at its
// file:// path relative to the chart, or under charts/ without a
// repository. It must stay inside the source, must not contain the chart
// itself (a cycle) and must match the version constraint.
func localDependency(dep *chart.Dependency, constraint, chartDir, sourceDir string) (*chart.Chart, error) {
	rel := filepath.Join("charts", dep.Name)
	if dep.Repository != "" {
		rel = strings.TrimPrefix(dep.Repository, "file://")
	}
	p := filepath.Clean(filepath.Join(chartDir, rel))
	if r, err := filepath.Rel(sourceDir, p); err != nil || !filepath.IsLocal(r) {
		return nil, fmt.Errorf("'%s' is outside the source", dep.Repository)
	}
	if r, err := filepath.Rel(p, chartDir); err == nil && (r == "." || filepath.IsLocal(r)) {
		return nil, fmt.Errorf("dependency cycle: '%s' is the chart itself or contains it", dep.Repository)
	}
	if _, err := os.Stat(p); err != nil {
		return nil, fmt.Errorf("no chart found at '%s' (reference '%s')", rel, dep.Repository)
	}
	sub, err := loader.Load(p)
	if err != nil {
		return nil, fmt.Errorf("failed to load chart from '%s' (reference '%s'): %w", rel, dep.Repository, err)
	}
	if constraint != "" {
		if err := checkVersion(sub.Metadata.Version, constraint); err != nil {
			return nil, err
		}
	}
	return sub, nil
}

// checkVersion fails unless version matches the SemVer constraint.
func checkVersion(version, constraint string) error {
	c, err := semver.NewConstraint(constraint)
	if err != nil {
		return fmt.Errorf("invalid version/constraint format '%s': %w", constraint, err)
	}
	v, err := semver.NewVersion(version)
	if err != nil {
		return fmt.Errorf("invalid chart version '%s': %w", version, err)
	}
	if !c.Check(v) {
		return fmt.Errorf("can't get a valid version for constraint '%s'", constraint)
	}
	return nil
}

// remoteDependency fetches a dependency from its repository with the
// fetcher of the URL's scheme and loads it. Helm's repository aliases
// ("@name", "alias:name") name entries of a local repositories.yaml,
// which a controller does not have: like Flux, they are refused.
func remoteDependency(ctx context.Context, dep *chart.Dependency, constraint string, deps Dependencies, dir string) (*chart.Chart, error) {
	if strings.HasPrefix(dep.Repository, "@") || strings.HasPrefix(dep.Repository, "alias:") {
		return nil, fmt.Errorf("aliased repository dependency is not supported: %s", dep.Repository)
	}
	u, err := url.Parse(dep.Repository)
	if err != nil {
		return nil, fmt.Errorf("invalid dependency repository URL '%s': %w", dep.Repository, err)
	}
	f := deps[u.Scheme]
	if f == nil {
		return nil, fmt.Errorf("invalid dependency repository URL: %s", dep.Repository)
	}
	file, err := f.FetchChart(ctx, dep.Repository, dep.Name, constraint, dir)
	if err != nil {
		return nil, fmt.Errorf("failed to get chart '%s' version '%s' from '%s': %w", dep.Name, constraint, dep.Repository, err)
	}
	defer os.Remove(file)
	sub, err := loader.LoadFile(file)
	if err != nil {
		return nil, fmt.Errorf("failed to load downloaded archive of chart '%s': %w", dep.Name, err)
	}
	if err := sub.Validate(); err != nil {
		return nil, fmt.Errorf("invalid downloaded chart '%s': %w", dep.Name, err)
	}
	return sub, nil
}
