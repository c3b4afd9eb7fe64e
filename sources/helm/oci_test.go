package helm

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"helm.sh/helm/v3/pkg/chart/loader"

	"github.com/sourceraft/sourceraft/internal/helmserver"
	"github.com/sourceraft/sourceraft/internal/ociregistry"
)

// pushChart packages the chart with the Helm SDK and pushes it to reg as
// <repo>/<name>:<tag>, returning the package's bytes.
func pushChart(t *testing.T, reg *ociregistry.Registry, repo, tag string, spec helmserver.ChartSpec) []byte {
	t.Helper()
	data := helmserver.Package(t, spec)
	reg.PushChart(t, repo+"/"+spec.Name, tag, data)
	return data
}

func newOCIClient(t *testing.T, url string, o OCIOptions) *OCIClient {
	t.Helper()
	u, err := ParseOCIURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := NewOCIClient(u, o)
	t.Cleanup(c.Close)
	return c
}

// TestOCIResolveAndPull resolves versions from a registry's tags with
// Flux's rules and pulls each chart exactly as pushed.
func TestOCIResolveAndPull(t *testing.T) {
	reg := ociregistry.Shared(t).Open
	repo := "charts/" + strings.ToLower(t.Name())
	pushed := map[string][]byte{}
	for _, v := range []string{"1.0.0", "1.2.0", "1.3.0+build.1", "2.0.0-rc.1"} {
		pushed[v] = pushChart(t, reg, repo, v, helmserver.ChartSpec{Name: "app", Version: v})
	}
	// A non-SemVer tag, even of a higher version, is never selected.
	pushChart(t, reg, repo, "latest", helmserver.ChartSpec{Name: "app", Version: "9.0.0"})
	c := newOCIClient(t, reg.URL(repo)+"/", OCIOptions{PlainHTTP: true})

	for version, want := range map[string]string{
		"":              "1.3.0+build.1",
		"*":             "1.3.0+build.1",
		"1.x":           "1.3.0+build.1",
		"~1.2":          "1.2.0",
		">=2.0.0-0":     "2.0.0-rc.1",
		"1.0.0":         "1.0.0",
		"1.3.0+build.1": "1.3.0+build.1",
		// Exact versions are not looked up in the tags.
		"7.7.7": "7.7.7",
	} {
		got, err := c.ResolveVersion(t.Context(), "app", version)
		if err != nil || got != want {
			t.Errorf("ResolveVersion(%q) = %q, %v; want %s", version, got, err, want)
		}
	}
	for version, msg := range map[string]string{
		"latest": "neither a SemVer version nor a range",
		"5.x":    "no 'app' chart with version matching '5.x' found",
	} {
		if got, err := c.ResolveVersion(t.Context(), "app", version); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("ResolveVersion(%q) = %q, %v; want an error with %q", version, got, err, msg)
		}
	}
	if _, err := c.ResolveVersion(t.Context(), "absent", "1.x"); err == nil || !strings.Contains(err.Error(), "could not get tags for '"+reg.URL(repo)+"/absent'") {
		t.Errorf("tags of a repository that does not exist: %v", err)
	}

	for _, v := range []string{"1.0.0", "1.3.0+build.1"} {
		file, err := c.Pull(t.Context(), "app", v, "", t.TempDir(), DefaultChartMaxSize)
		if err != nil {
			t.Fatalf("pull %s: %v", v, err)
		}
		if got, _ := os.ReadFile(file); !bytes.Equal(got, pushed[v]) {
			t.Errorf("pulled %s is not the pushed package", v)
		}
	}
	if _, err := c.Pull(t.Context(), "app", "3.0.0", "", t.TempDir(), DefaultChartMaxSize); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("pull of a missing tag: %v", err)
	}
}

// TestBuildFromOCI builds as the HTTP path does: the chart as published,
// or repackaged with merged values at the version with metadata, and
// stops at the stored artifact.
func TestBuildFromOCI(t *testing.T) {
	reg := ociregistry.Shared(t).Open
	repo := "charts/" + strings.ToLower(t.Name())
	published := pushChart(t, reg, repo, "1.0.0", helmserver.ChartSpec{Name: "app", Version: "1.0.0",
		Files: map[string][]byte{"values-prod.yaml": []byte("replicas: 3\n")}})
	c := newOCIClient(t, reg.URL(repo), OCIOptions{PlainHTTP: true})
	opts := func(values ...string) RemoteBuildOptions {
		return RemoteBuildOptions{BuildOptions: BuildOptions{ValuesFiles: values, Dir: t.TempDir()},
			Chart: "app", Version: "1.x", VersionMetadata: "4", MaxSize: DefaultChartMaxSize}
	}

	b, err := BuildFromOCI(t.Context(), c, opts())
	if err != nil || b.Name != "app" || b.Version != "1.0.0" || b.Packaged {
		t.Fatalf("build %+v, %v", b, err)
	}
	if got, _ := os.ReadFile(b.Path); !bytes.Equal(got, published) {
		t.Error("chart not stored as published")
	}

	b, err = BuildFromOCI(t.Context(), c, opts("values.yaml", "values-prod.yaml"))
	if err != nil || b.Version != "1.0.0+4" || !b.Packaged || !reflect.DeepEqual(b.ValuesFiles, []string{"values.yaml", "values-prod.yaml"}) {
		t.Fatalf("build with values %+v, %v", b, err)
	}
	ch, err := loader.LoadFile(b.Path)
	if err != nil || ch.Metadata.Version != "1.0.0+4" || ch.Values["replicas"] != float64(3) {
		t.Fatalf("packaged chart %v, values %v: %v", ch.Metadata, ch.Values, err)
	}

	o := opts()
	o.UpToDate = func(name, version string) bool { return name == "app" && version == "1.0.0" }
	if b, err = BuildFromOCI(t.Context(), c, o); err != nil || !b.UpToDate || b.Path != "" {
		t.Fatalf("up to date build %+v, %v", b, err)
	}

	o = opts()
	o.Chart = "Bad_Name"
	var be *BuildError
	if _, err := BuildFromOCI(t.Context(), c, o); !errors.As(err, &be) || be.Reason != ReasonChartReference {
		t.Fatalf("invalid chart name: %v", err)
	}
}

// TestOCIPullFailures: each bad input fails with the error the
// reconciler maps to its condition.
func TestOCIPullFailures(t *testing.T) {
	regs := ociregistry.Shared(t)
	repo := "charts/" + strings.ToLower(t.Name())
	pushChart(t, regs.Open, repo, "1.0.0", helmserver.ChartSpec{Name: "app", Version: "1.0.0"})
	// Incompressible files over 1 MiB in all.
	pushChart(t, regs.Open, repo, "1.0.0", helmserver.ChartSpec{Name: "big", Version: "1.0.0",
		Files: map[string][]byte{"a.bin": randomBytes(t, 700<<10), "b.bin": randomBytes(t, 700<<10)}})
	pushChart(t, regs.Private, repo, "1.0.0", helmserver.ChartSpec{Name: "private", Version: "1.0.0"})
	regs.Open.PushFiles(t, repo+"/artifact", "1.0.0", map[string]string{"a.yaml": "a"})
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	imgRef, err := name.ParseReference(regs.Open.Host+"/"+repo+"/image:1.0.0", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(imgRef, img); err != nil {
		t.Fatal(err)
	}
	ca := x509.NewCertPool()
	ca.AppendCertsFromPEM(regs.TLSCA)
	mtlsCA := x509.NewCertPool()
	mtlsCA.AppendCertsFromPEM(regs.MTLSCA)
	clientCert, err := tls.X509KeyPair(regs.MTLSClient.CertPEM, regs.MTLSClient.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	plain := OCIOptions{PlainHTTP: true}
	for _, tc := range []struct {
		name     string
		url      string
		o        OCIOptions
		chart    string
		max      int64
		want     error // nil: the pull succeeds
		contains string
	}{
		{name: "within the limit", url: regs.Open.URL(repo), o: plain, chart: "big", max: DefaultChartMaxSize},
		{name: "over the limit", url: regs.Open.URL(repo), o: plain, chart: "big", max: 1 << 20, want: ErrTooLarge},
		{name: "flux artifact", url: regs.Open.URL(repo), o: plain, chart: "artifact", want: ErrNotChart},
		{name: "container image", url: regs.Open.URL(repo), o: plain, chart: "image", want: ErrNotChart},
		{name: "anonymous", url: regs.Private.URL(repo), o: plain, chart: "private", want: ErrAuthentication},
		{name: "wrong password", url: regs.Private.URL(repo), o: OCIOptions{PlainHTTP: true, Username: ociregistry.User, Password: "wrong"},
			chart: "private", want: ErrAuthentication},
		{name: "basic auth", url: regs.Private.URL(repo), o: OCIOptions{PlainHTTP: true, Username: ociregistry.User, Password: ociregistry.Password},
			chart: "private"},
		{name: "tls with ca", url: regs.TLS.URL(repo), o: OCIOptions{TLS: &tls.Config{RootCAs: ca}}, chart: "app"},
		{name: "tls unknown ca", url: regs.TLS.URL(repo), chart: "app", want: ErrAuthentication, contains: "certificate"},
		{name: "mtls with client certificate", url: regs.MTLS.URL(repo),
			o: OCIOptions{TLS: &tls.Config{RootCAs: mtlsCA, Certificates: []tls.Certificate{clientCert}}}, chart: "app"},
		{name: "mtls without client certificate", url: regs.MTLS.URL(repo), o: OCIOptions{TLS: &tls.Config{RootCAs: mtlsCA}},
			chart: "app", want: ErrAuthentication},
		{name: "unreachable", url: "oci://" + closedAddr + "/" + repo, o: plain, chart: "app", contains: "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newOCIClient(t, tc.url, tc.o)
			max := tc.max
			if max == 0 {
				max = DefaultChartMaxSize
			}
			_, err := c.Pull(t.Context(), tc.chart, "1.0.0", "", t.TempDir(), max)
			t.Logf("pull: %v", err)
			switch {
			case tc.want == nil && tc.contains == "" && err != nil:
				t.Fatalf("pull: %v", err)
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Fatalf("pull: %v, want %v", err, tc.want)
			case tc.contains != "" && (err == nil || !strings.Contains(err.Error(), tc.contains)):
				t.Fatalf("pull: %v, want an error with %q", err, tc.contains)
			case tc.want == nil && errors.Is(err, ErrAuthentication):
				t.Fatalf("pull: %v is not an authentication failure", err)
			}
		})
	}
	// The tag listing of a range fails the same way.
	if _, err := newOCIClient(t, regs.Private.URL(repo), plain).ResolveVersion(t.Context(), "private", "1.x"); !errors.Is(err, ErrAuthentication) {
		t.Errorf("anonymous tag listing: %v", err)
	}
}

func TestParseOCIURL(t *testing.T) {
	for _, raw := range []string{"https://registry.example.com/charts", "oci://", "oci:///charts", "oci://u:p@registry.example.com/charts", "::"} {
		if _, err := ParseOCIURL(raw); !errors.Is(err, ErrInvalidURL) {
			t.Errorf("ParseOCIURL(%q): %v, want ErrInvalidURL", raw, err)
		}
	}
	c := newOCIClient(t, "oci://registry.example.com:5000/org/charts/", OCIOptions{})
	if got := c.RepositoryURL("app"); got != "oci://registry.example.com:5000/org/charts/app" {
		t.Fatalf("repository URL %s", got)
	}
}

// randomBytes is incompressible data, for charts over a size limit.
func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBoundTransportStreamed stops a response without a Content-Length
// at the limit.
func TestBoundTransportStreamed(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		for range 4 {
			w.Write(make([]byte, 1000))
			w.(http.Flusher).Flush()
		}
	}))
	t.Cleanup(srv.Close)
	for max, want := range map[int64]error{4000: nil, 3999: ErrTooLarge} {
		hc := &http.Client{Transport: &boundTransport{ctx: t.Context(), max: max, next: http.DefaultTransport}}
		resp, err := hc.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		if resp.ContentLength != -1 {
			t.Fatalf("response has a Content-Length %d", resp.ContentLength)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if !errors.Is(err, want) || (want == nil && n != 4000) || n > max+1 {
			t.Errorf("max %d: read %d bytes, %v; want %v", max, n, err, want)
		}
	}
}
