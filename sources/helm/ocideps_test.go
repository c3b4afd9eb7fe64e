package helm

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart"

	"github.com/sourceraft/sourceraft/internal/helmserver"
	"github.com/sourceraft/sourceraft/internal/ociregistry"
)

// ociOpener opens every registry over plain HTTP, with the private
// test registry's credentials (password pass) for its host only.
func ociOpener(t *testing.T, pass string, opened map[string]int) OCIOpener {
	return func(_ context.Context, u *url.URL) (*OCIClient, error) {
		opened[u.String()]++
		o := OCIOptions{PlainHTTP: true}
		if u.Host == ociregistry.Shared(t).Private.Host {
			o.Username, o.Password = ociregistry.User, pass
		}
		return NewOCIClient(u, o), nil
	}
}

// buildOCIDeps builds charts/app of src with the OCI fetcher of open.
func buildOCIDeps(t *testing.T, src string, open OCIOpener, limits Limits) (*Build, error) {
	t.Helper()
	f := NewOCIFetcher(open, limits)
	defer f.Close()
	return buildWith(t, src, Dependencies{"oci": f})
}

// TestOCIDependencies resolves a chart directory's oci:// dependencies
// from real registries on loopback: a SemVer range to the newest
// matching tag in a registry behind basic auth, an aliased exact
// version from an open one, each registry URL opened once however it is
// spelt; the subcharts are the pushed charts.
func TestOCIDependencies(t *testing.T) {
	regs := ociregistry.Shared(t)
	repo := "charts/" + strings.ToLower(t.Name())
	for _, v := range []string{"1.0.0", "1.2.0", "1.3.0-rc.1", "2.0.0"} {
		pushChart(t, regs.Private, repo, v, helmserver.ChartSpec{Name: "redis", Version: v})
	}
	pushChart(t, regs.Private, repo, "0.5.0", helmserver.ChartSpec{Name: "common", Version: "0.5.0"})
	pushChart(t, regs.Open, repo, "3.1.0", helmserver.ChartSpec{Name: "nginx", Version: "3.1.0"})
	pushChart(t, regs.Open, repo, "3.2.0", helmserver.ChartSpec{Name: "nginx", Version: "3.2.0"})

	src := depSource(t, []*chart.Dependency{
		{Name: "redis", Version: "^1.0.0", Repository: regs.Private.URL(repo)},
		{Name: "common", Version: "", Repository: regs.Private.URL(repo) + "/"},
		{Name: "nginx", Version: "3.1.0", Repository: regs.Open.URL(repo), Alias: "web"},
	}, nil)
	opened := map[string]int{}
	b, err := buildOCIDeps(t, src, ociOpener(t, ociregistry.Password, opened), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	got := subchartVersions(t, b.Path)
	if len(got) != 3 || got["redis"] != "1.2.0" || got["common"] != "0.5.0" || got["web"] != "3.1.0" {
		t.Fatalf("subcharts %v, want redis 1.2.0, common 0.5.0, web 3.1.0", got)
	}
	if len(opened) != 2 || opened[regs.Private.URL(repo)] != 1 || opened[regs.Open.URL(repo)] != 1 {
		t.Fatalf("registries opened %v, want each once", opened)
	}

	// A newer match is picked up by the next build.
	pushChart(t, regs.Private, repo, "1.4.0", helmserver.ChartSpec{Name: "redis", Version: "1.4.0"})
	b, err = buildOCIDeps(t, src, ociOpener(t, ociregistry.Password, map[string]int{}), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if got := subchartVersions(t, b.Path)["redis"]; got != "1.4.0" {
		t.Fatalf("redis %s after 1.4.0 was pushed", got)
	}
}

// TestOCIDependencyFailures: every bad oci:// dependency fails the build
// as a DependencyBuildError saying what was wrong.
func TestOCIDependencyFailures(t *testing.T) {
	regs := ociregistry.Shared(t)
	repo := "charts/" + strings.ToLower(t.Name())
	pushChart(t, regs.Private, repo, "1.0.0", helmserver.ChartSpec{Name: "redis", Version: "1.0.0"})
	pushChart(t, regs.Open, repo, "1.0.0", helmserver.ChartSpec{Name: "big", Version: "1.0.0",
		Files: map[string][]byte{"a.bin": randomBytes(t, 64<<10)}})
	regs.Open.PushFiles(t, repo+"/artifact", "1.0.0", map[string]string{"a.yaml": "a"})

	dep := func(name, version, repo string) []*chart.Dependency {
		return []*chart.Dependency{{Name: name, Version: version, Repository: repo}}
	}
	private, open := regs.Private.URL(repo), regs.Open.URL(repo)
	for name, tt := range map[string]struct {
		deps   []*chart.Dependency
		pass   string
		limits Limits
		want   string
		is     error
	}{
		"no matching tag":       {deps: dep("redis", ">=5.0.0", private), want: "no 'redis' chart with version matching '>=5.0.0' found"},
		"repository missing":    {deps: dep("nosuch", "1.x", private), want: "could not get tags for '" + private + "/nosuch'"},
		"exact tag missing":     {deps: dep("redis", "9.9.9", private), want: "not found"},
		"not a chart":           {deps: dep("artifact", "1.0.0", open), is: ErrNotChart},
		"wrong password":        {deps: dep("redis", "1.0.0", private), pass: "wrong", is: ErrAuthentication},
		"wrong password, range": {deps: dep("redis", "1.x", private), pass: "wrong", is: ErrAuthentication},
		"chart too large":       {deps: dep("big", "1.0.0", open), limits: Limits{ChartMaxSize: 16 << 10}, is: ErrTooLarge},
		"invalid URL":           {deps: dep("redis", "1.0.0", "oci:///charts"), is: ErrInvalidURL},
		"not SemVer":            {deps: dep("redis", "latest", private), want: "neither a SemVer version nor a range"},
	} {
		t.Run(name, func(t *testing.T) {
			pass := tt.pass
			if pass == "" {
				pass = ociregistry.Password
			}
			_, err := buildOCIDeps(t, depSource(t, tt.deps, nil), ociOpener(t, pass, map[string]int{}), tt.limits)
			var be *BuildError
			if !errors.As(err, &be) || be.Reason != ReasonDependencyBuild {
				t.Fatalf("error %v, want a %s", err, ReasonDependencyBuild)
			}
			if tt.is != nil && !errors.Is(err, tt.is) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %v with %q", err, tt.is, tt.want)
			}
		})
	}

	// Without an opener the registry is asked anonymously, over HTTPS:
	// the plain HTTP test registry cannot answer.
	_, err := buildDeps(t, depSource(t, dep("redis", "1.0.0", private), nil), nil, Limits{})
	if !strings.Contains(err.Error(), "http: server gave HTTP response to HTTPS client") {
		t.Fatalf("anonymous default: %v", err)
	}
}
