package reconcile

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sourceraft/sourceraft/internal/minioserver"
	"github.com/sourceraft/sourceraft/internal/ociregistry"
	"github.com/sourceraft/sourceraft/internal/testproxy"
)

// Credentials of the proxy that asks for them.
const (
	proxyUser = "proxy-user"
	proxyPass = "proxy-pass"
)

// startProxy starts a loopback proxy (testproxy) for one test.
func startProxy(t *testing.T, user, pass string) *testproxy.Proxy {
	t.Helper()
	p := testproxy.Start(user, pass)
	t.Cleanup(p.Close)
	return p
}

// proxyRef is a spec.proxySecretRef.
func proxyRef(name string) *meta.LocalObjectReference { return &meta.LocalObjectReference{Name: name} }

// proxySecrets creates, in ns, the proxy secrets (Flux's keys) the proxy
// tests share: "good" for p, "wrong" (the wrong password) for refusing,
// and the invalid ones. Two proxies keep what each carried apart.
// bucketSecret makes any string-data Secret.
func proxySecrets(t *testing.T, ns string, p, refusing *testproxy.Proxy) {
	t.Helper()
	bucketSecret(t, ns, "good", map[string]string{"address": p.URL(), "username": proxyUser, "password": proxyPass})
	bucketSecret(t, ns, "wrong", map[string]string{"address": refusing.URL(), "username": proxyUser, "password": "not-" + proxyPass})
	bucketSecret(t, ns, "no-address", map[string]string{"username": proxyUser, "password": proxyPass})
	bucketSecret(t, ns, "ftp", map[string]string{"address": "ftp://127.0.0.1:21"})
}

// hostOf is the host:port of an http(s) URL.
func hostOf(t *testing.T, rawURL string) string {
	t.Helper()
	_, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		t.Fatalf("no scheme in %q", rawURL)
	}
	host, _, _ := strings.Cut(rest, "/")
	return host
}

// checkProxyRefused checks a fetch through the proxy with the wrong
// password: it failed with reason, the proxy refused requests to target,
// carried none, and no artifact was stored.
func checkProxyRefused[T sourceObject](t *testing.T, ns, name, reason string, p *testproxy.Proxy, target string) {
	t.Helper()
	o := waitFailed[T](t, ns, name, sourcev1.FetchFailedCondition, reason)
	if msg := conditions.GetMessage(o, sourcev1.FetchFailedCondition); !names407(msg) {
		t.Errorf("FetchFailed message %q does not name the proxy's 407", msg)
	}
	if o.GetArtifact() != nil {
		t.Errorf("artifact %+v stored without the proxy", o.GetArtifact())
	}
	if arts := storedOf[T](t, ns, name); len(arts) != 0 {
		t.Errorf("store holds %d artifacts of a source the proxy refused", len(arts))
	}
	if p.RefusedTo(target) == 0 {
		t.Errorf("the proxy refused nothing to %s: the fetch went around it", target)
	}
	if n := p.CarriedTo(target); n != 0 {
		t.Errorf("the proxy carried %d requests to %s with a wrong password", n, target)
	}
	if evs := eventSink.await(t, ns, name, reason, 10*time.Second); !names407(evs[len(evs)-1].Message) {
		t.Errorf("failure event %q does not name the proxy's 407", evs[len(evs)-1].Message)
	}
}

// names407 reports whether an error message names the proxy's refusal:
// its status code, or its status text in any case (Go's CONNECT error,
// minio-go's reading of the answer).
func names407(msg string) bool {
	return strings.Contains(msg, "407") ||
		strings.Contains(strings.ToLower(msg), strings.ToLower(http.StatusText(http.StatusProxyAuthRequired)))
}

// proxySecretCases are the invalid proxy secrets, with the message Flux
// gives each (after its kind's prefix).
func proxySecretCases(ns string) []struct{ secret, message string } {
	return []struct{ secret, message string }{
		{"missing", "secret '" + ns + "/missing' not found"},
		{"no-address", "secret '" + ns + "/no-address': key 'address' not found"},
		{"ftp", "secret '" + ns + "/ftp': proxy URL must use one of the supported schemes (http, https, socks5), got 'ftp'"},
	}
}

func TestProxyGitRepository(t *testing.T) {
	ns := newNamespace(t)
	p, refusing := startProxy(t, proxyUser, proxyPass), startProxy(t, proxyUser, proxyPass)
	proxySecrets(t, ns, p, refusing)
	repo := gitSrv.newRepo(t, "private", "proxied-"+ns)
	sha := repo.commit("proxied", map[string]string{"app.yaml": "proxied"})
	target := hostOf(t, repo.URL)
	bucketSecret(t, ns, "basic", map[string]string{"username": gitUser, "password": gitPass})
	withProxy := func(name string) func(*sourcev1.GitRepository) {
		return func(o *sourcev1.GitRepository) {
			o.Spec.SecretRef = &meta.LocalObjectReference{Name: "basic"}
			o.Spec.ProxySecretRef = proxyRef(name)
		}
	}
	newGitRepository(t, ns, "through-proxy", repo.URL, withProxy("good"))
	newGitRepository(t, ns, "proxy-refuses", repo.URL, withProxy("wrong"))
	newGitRepository(t, ns, "with-submodules", repo.URL, func(o *sourcev1.GitRepository) {
		withProxy("good")(o)
		o.Spec.RecurseSubmodules = true
	})
	cases := proxySecretCases(ns)
	for _, c := range cases {
		newGitRepository(t, ns, "secret-"+c.secret, repo.URL, withProxy(c.secret))
	}

	t.Run("fetch goes through the proxy", func(t *testing.T) {
		o := waitReady[*sourcev1.GitRepository](t, ns, "through-proxy", "master@sha1:"+sha)
		if files := untar(t, download(t, o.Status.Artifact)); files["app.yaml"] != "proxied" {
			t.Errorf("artifact files %v", fileNames(files))
		}
		// The git server is on loopback, which the environment's proxy
		// rules skip: the proxy must have carried it all the same.
		if p.CarriedTo(target) == 0 {
			t.Fatalf("the proxy carried nothing to %s; carried %s", target, p.Hosts())
		}
	})
	t.Run("proxy refusing the credentials fails the fetch", func(t *testing.T) {
		checkProxyRefused[*sourcev1.GitRepository](t, ns, "proxy-refuses", sourcev1.GitOperationFailedReason, refusing, target)
	})
	t.Run("submodules cannot go through the proxy", func(t *testing.T) {
		o := waitFailed[*sourcev1.GitRepository](t, ns, "with-submodules", sourcev1.FetchFailedCondition, "UnsupportedField")
		if !conditions.IsTrue(o, meta.StalledCondition) || !strings.Contains(conditionMessage(o, sourcev1.FetchFailedCondition), "spec.recurseSubmodules with spec.proxySecretRef") {
			t.Errorf("conditions %v", o.Status.Conditions)
		}
	})
	for _, c := range cases {
		t.Run("proxy secret "+c.secret, func(t *testing.T) {
			o := waitFailed[*sourcev1.GitRepository](t, ns, "secret-"+c.secret, sourcev1.FetchFailedCondition, sourcev1.AuthenticationFailedReason)
			if msg, want := conditionMessage(o, sourcev1.FetchFailedCondition), "failed to configure proxy options: "+c.message; msg != want {
				t.Errorf("FetchFailed message %q, want %q", msg, want)
			}
			if o.Status.Artifact != nil || conditions.IsTrue(o, meta.StalledCondition) {
				t.Errorf("artifact %v, conditions %v", o.Status.Artifact, o.Status.Conditions)
			}
			eventSink.await(t, ns, "secret-"+c.secret, sourcev1.AuthenticationFailedReason, 10*time.Second)
		})
	}
}

func TestProxyOCIRepository(t *testing.T) {
	ns := newNamespace(t)
	p, refusing := startProxy(t, proxyUser, proxyPass), startProxy(t, proxyUser, proxyPass)
	proxySecrets(t, ns, p, refusing)
	regs := ociregistry.Shared(t)
	repo := "proxy/" + ns
	digest := regs.Open.PushFiles(t, repo, "v1", map[string]string{"a.yaml": "proxied"})
	ca := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ca"}, Data: map[string][]byte{"ca.crt": regs.TLSCA}}
	if err := env.Client.Create(context.Background(), ca); err != nil {
		t.Fatal(err)
	}
	withProxy := func(name string) func(*sourcev1.OCIRepository) {
		return func(o *sourcev1.OCIRepository) {
			o.Spec.Reference = &sourcev1.OCIRepositoryRef{Tag: "v1"}
			o.Spec.ProxySecretRef = proxyRef(name)
		}
	}
	// The TLS front of the same storage: through a CONNECT tunnel.
	tlsProxied := func(name string) func(*sourcev1.OCIRepository) {
		return func(o *sourcev1.OCIRepository) {
			withProxy(name)(o)
			o.Spec.Insecure = false
			o.Spec.CertSecretRef = &meta.LocalObjectReference{Name: "ca"}
		}
	}
	ociNew(t, ns, "plain-http", regs.Open.URL(repo), withProxy("good"))
	ociNew(t, ns, "tls", regs.TLS.URL(repo), tlsProxied("good"))
	ociNew(t, ns, "proxy-refuses", regs.TLS.URL(repo), tlsProxied("wrong"))
	cases := proxySecretCases(ns)
	for _, c := range cases {
		ociNew(t, ns, "secret-"+c.secret, regs.Open.URL(repo), withProxy(c.secret))
	}

	for _, tt := range []struct{ name, host string }{{"plain-http", regs.Open.Host}, {"tls", regs.TLS.Host}} {
		t.Run("pull goes through the proxy "+tt.name, func(t *testing.T) {
			o := ociReadyAt(t, ns, tt.name, "v1@"+digest.String())
			if files := untar(t, ociCheckArtifact(t, o, digest)); files["a.yaml"] != "proxied" {
				t.Errorf("artifact files %v", fileNames(files))
			}
			if p.CarriedTo(tt.host) == 0 {
				t.Fatalf("the proxy carried nothing to %s; carried %s", tt.host, p.Hosts())
			}
		})
	}
	t.Run("proxy refusing the credentials fails the pull", func(t *testing.T) {
		checkProxyRefused[*sourcev1.OCIRepository](t, ns, "proxy-refuses", sourcev1.OCIPullFailedReason, refusing, regs.TLS.Host)
	})
	for _, c := range cases {
		t.Run("proxy secret "+c.secret, func(t *testing.T) {
			o := ociFailedWith(t, ns, "secret-"+c.secret, sourcev1.FetchFailedCondition, sourcev1.AuthenticationFailedReason)
			if msg, want := conditions.GetMessage(o, sourcev1.FetchFailedCondition), "failed to get proxy address: "+c.message; msg != want {
				t.Errorf("FetchFailed message %q, want %q", msg, want)
			}
			if o.Status.Artifact != nil {
				t.Errorf("artifact %v", o.Status.Artifact)
			}
		})
	}
}

func TestProxyBucket(t *testing.T) {
	m := minioserver.Shared(t)
	ns := newNamespace(t)
	p, refusing := startProxy(t, proxyUser, proxyPass), startProxy(t, proxyUser, proxyPass)
	proxySecrets(t, ns, p, refusing)
	bucket := m.NewBucket(t, map[string]string{"app.yaml": "proxied"})
	withProxy := func(name string) func(*sourcev1.Bucket) {
		return func(o *sourcev1.Bucket) { o.Spec.ProxySecretRef = proxyRef(name) }
	}
	newBucketSource(t, ns, "through-proxy", bucket, withProxy("good"))
	newBucketSource(t, ns, "proxy-refuses", bucket, withProxy("wrong"))
	cases := proxySecretCases(ns)
	for _, c := range cases {
		newBucketSource(t, ns, "secret-"+c.secret, bucket, withProxy(c.secret))
	}

	t.Run("fetch goes through the proxy", func(t *testing.T) {
		o := bucketReadyAt(t, ns, "through-proxy", bucketRevision(t, bucket, "", nil))
		if files := bucketCheckArtifact(t, o); files["app.yaml"] != "proxied" {
			t.Errorf("artifact files %v", fileNames(files))
		}
		if p.CarriedTo(m.Endpoint) == 0 {
			t.Fatalf("the proxy carried nothing to %s; carried %s", m.Endpoint, p.Hosts())
		}
	})
	t.Run("proxy refusing the credentials fails the fetch", func(t *testing.T) {
		checkProxyRefused[*sourcev1.Bucket](t, ns, "proxy-refuses", sourcev1.BucketOperationFailedReason, refusing, m.Endpoint)
	})
	for _, c := range cases {
		t.Run("proxy secret "+c.secret, func(t *testing.T) {
			o := bucketFailedWith(t, ns, "secret-"+c.secret, sourcev1.FetchFailedCondition, sourcev1.AuthenticationFailedReason)
			if msg, want := conditions.GetMessage(o, sourcev1.FetchFailedCondition), "failed to get proxy URL: "+c.message; msg != want {
				t.Errorf("FetchFailed message %q, want %q", msg, want)
			}
			if o.Status.Artifact != nil {
				t.Errorf("artifact %v", o.Status.Artifact)
			}
		})
	}
}
