package reconcile

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	gcrv1 "github.com/google/go-containerregistry/pkg/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sourceraft/sourceraft/internal/gcpserver"
	"github.com/sourceraft/sourceraft/internal/helmserver"
	"github.com/sourceraft/sourceraft/internal/ociregistry"
	"github.com/sourceraft/sourceraft/internal/ocisign"
)

// The GKE cluster the controller runs on, as its metadata server says.
const (
	gcpProject  = "sourceraft-test"
	gcpLocation = "europe-west1"
	gcpCluster  = "fleet"
	// gcpPuller is the Google service account ServiceAccounts of the tests
	// impersonate.
	gcpPuller = "puller@sourceraft-test.iam.gserviceaccount.com"
)

// gcp is Google Cloud as the tests see it (startGCP).
var gcp struct {
	srv *gcpserver.Server
	// addr is where STS, IAM Credentials and the OAuth token endpoint
	// listen, for the routes of the tests' own proxies.
	addr string
	// europe (Artifact Registry's europe-docker.pkg.dev) lets only the
	// controller's token in, us (us-docker.pkg.dev) only gcpPuller's.
	europe, us *ociregistry.Named
}

// startGCP puts Google Cloud on loopback for the process: the metadata
// server as GCE_METADATA_HOST (read by cloud.google.com/go/compute/metadata
// at every request; with it set the process is on GCE), STS and IAM
// Credentials behind cloud's proxy, and two Artifact Registry hosts.
// Before any reconcile asks for a gcp provider.
func startGCP() (func(), error) {
	gcp.srv = gcpserver.Start(env.Client, gcpProject, gcpLocation, gcpCluster)
	stop := []func(){gcp.srv.Close}
	cleanup := func() {
		for _, f := range stop {
			f()
		}
	}
	// Application default credentials would win over the metadata server.
	if err := os.Unsetenv("GOOGLE_APPLICATION_CREDENTIALS"); err != nil {
		return cleanup, err
	}
	if err := os.Setenv("GCE_METADATA_HOST", gcp.srv.MetadataHost()); err != nil {
		return cleanup, err
	}
	srv, err := cloud.Serve(gcp.srv.Handler(), gcpserver.Hosts...)
	if err != nil {
		return cleanup, err
	}
	gcp.addr = srv.Listener.Addr().String()
	pullerToken := gcpserver.NewToken("ya29.puller")
	gcp.srv.AddServiceAccount(gcpPuller, pullerToken)
	for _, r := range []struct {
		reg   **ociregistry.Named
		host  string
		token string
	}{{&gcp.europe, "europe-docker.pkg.dev", gcp.srv.ControllerToken}, {&gcp.us, "us-docker.pkg.dev", pullerToken}} {
		pair, err := cloud.CA.Issue(r.host, []string{r.host}, []net.IP{net.ParseIP("127.0.0.1")})
		if err != nil {
			return cleanup, err
		}
		// Artifact Registry's username for an OAuth 2 access token.
		reg, err := ociregistry.StartNamed(r.host, pair, "oauth2accesstoken", r.token)
		if err != nil {
			return cleanup, err
		}
		stop = append(stop, reg.Close)
		cloud.Route(r.host+":443", reg.Addr)
		*r.reg = reg
	}
	return cleanup, nil
}

// gcpControllerIdentity fails the test where the controller's gcp
// identity would not be the metadata server's: gcloud's application
// default credentials in $HOME win over it.
func gcpControllerIdentity(t *testing.T) {
	t.Helper()
	home, err := os.UserHomeDir()
	if err != nil {
		return
	}
	f := filepath.Join(home, ".config", "gcloud", "application_default_credentials.json")
	if _, err := os.Stat(f); err == nil {
		t.Fatalf("%s exists: the controller would authenticate with it, not with the metadata server", f)
	}
}

// ociCloudNew creates an OCIRepository of provider for url over TLS
// (the cloud CA is a system root), at tag v1.
func ociCloudNew(t *testing.T, ns, name, url, provider string, mutate func(*sourcev1.OCIRepository)) {
	t.Helper()
	ociNew(t, ns, name, url, func(o *sourcev1.OCIRepository) {
		o.Spec.Insecure = false
		o.Spec.Provider = provider
		o.Spec.Reference = &sourcev1.OCIRepositoryRef{Tag: "v1"}
		if mutate != nil {
			mutate(o)
		}
	})
}

// gcpServiceAccount creates the ServiceAccount ns/name, annotated to
// impersonate the Google service account googleAccount, with
// pullSecrets as its image pull secrets.
func gcpServiceAccount(t *testing.T, ns, name, googleAccount string, pullSecrets ...string) {
	t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
		Annotations: map[string]string{"iam.gke.io/gcp-service-account": googleAccount}}}
	for _, s := range pullSecrets {
		sa.ImagePullSecrets = append(sa.ImagePullSecrets, corev1.LocalObjectReference{Name: s})
	}
	createObject(t, sa, nil)
}

// TestOCIRepositoryCloudGCP pulls from Artifact Registry as the
// controller (the metadata server's token) and as a ServiceAccount of the
// object's namespace (GKE workload identity federation: its Kubernetes
// token exchanged at STS, then for gcpPuller's token at IAM Credentials;
// its cosign signature read with the same token),
// and fails with Flux's reasons and messages, without an artifact, where
// the provider refuses the registry or the identity, or the registry
// refuses the token.
func TestOCIRepositoryCloudGCP(t *testing.T) {
	gcpControllerIdentity(t)
	ns := newNamespace(t)
	repo := gcpProject + "/flux/" + ns
	files := map[string]string{"app.yaml": "from artifact registry"}
	europeDigest := gcp.europe.PushFiles(t, repo, "v1", files)
	usDigest := gcp.us.PushFiles(t, repo, "v1", files)

	gcpServiceAccount(t, ns, "puller", gcpPuller)
	gcp.srv.Bind(gcpPuller, ns, "puller")
	gcpServiceAccount(t, ns, "unbound", gcpPuller)
	gcpServiceAccount(t, ns, "secrets-missing", gcpPuller, "absent")
	withSA := func(name string) func(*sourcev1.OCIRepository) {
		return func(o *sourcev1.OCIRepository) { o.Spec.ServiceAccountName = name }
	}

	// The cosign signature lives in the registry too: verification reads
	// it with the provider's credentials.
	key := ocisign.NewCosignKey(t)
	ocisign.CosignAttach(t, gcp.us.Registry, repo, usDigest.String(), usDigest.String(), key.Signer)
	newHelmSecret(t, ns, "cosign", map[string]string{"cosign.pub": string(key.Public)})

	ociCloudNew(t, ns, "controller", gcp.europe.URL(repo), sourcev1.GoogleOCIProvider, nil)
	ociCloudNew(t, ns, "object", gcp.us.URL(repo), sourcev1.GoogleOCIProvider, func(o *sourcev1.OCIRepository) {
		o.Spec.ServiceAccountName = "puller"
		o.Spec.Verify = &sourcev1.OCIRepositoryVerification{Provider: "cosign", SecretRef: &meta.LocalObjectReference{Name: "cosign"}}
	})
	for name, digest := range map[string]gcrv1.Hash{"controller": europeDigest, "object": usDigest} {
		o := ociReadyAt(t, ns, name, "v1@"+digest.String())
		if got := untar(t, ociCheckArtifact(t, o, digest)); got["app.yaml"] != files["app.yaml"] {
			t.Errorf("%s: artifact files %v", name, fileNames(got))
		}
		if name == "object" {
			ociVerified(t, o, "v1@"+digest.String())
		}
	}

	tests := []struct {
		name, url, provider string
		mutate              func(*sourcev1.OCIRepository)
		reason, message     string
	}{
		// fluxcd/pkg/auth's own refusal of a registry not theirs: the
		// provider was dispatched.
		{"aws", gcp.europe.URL(repo), sourcev1.AmazonOCIProvider, nil, sourcev1.AuthenticationFailedReason,
			"failed to get credential from aws: invalid AWS registry: 'europe-docker.pkg.dev'"},
		{"azure", gcp.europe.URL(repo), sourcev1.AzureOCIProvider, nil, sourcev1.AuthenticationFailedReason,
			"failed to get credential from azure: invalid Azure registry: 'europe-docker.pkg.dev'"},
		{"gcp-not-gar", "oci://registry.example.com/" + repo, sourcev1.GoogleOCIProvider, nil, sourcev1.AuthenticationFailedReason,
			"failed to get credential from gcp: invalid GCP registry: 'registry.example.com'"},
		// The controller's token where only gcpPuller's is let in.
		{"token-refused", gcp.us.URL(repo), sourcev1.GoogleOCIProvider, nil, sourcev1.OCIPullFailedReason, "UNAUTHORIZED"},
		{"sa-not-bound", gcp.us.URL(repo), sourcev1.GoogleOCIProvider, withSA("unbound"), sourcev1.AuthenticationFailedReason,
			"failed to get credential from gcp: failed to get access token for artifact registry: failed to create provider access token for service account '" +
				ns + "/unbound'"},
		{"sa-missing", gcp.us.URL(repo), sourcev1.GoogleOCIProvider, withSA("nobody"), sourcev1.AuthenticationFailedReason,
			"failed to get credential: serviceaccount '" + ns + "/nobody' not found"},
		{"pull-secret-missing", gcp.us.URL(repo), sourcev1.GenericOCIProvider, withSA("secrets-missing"), sourcev1.AuthenticationFailedReason,
			"failed to get credential: failed to get image pull secret for serviceaccount '" + ns + "/secrets-missing': secret '" + ns + "/absent' not found"},
	}
	for _, tt := range tests {
		ociCloudNew(t, ns, tt.name, tt.url, tt.provider, tt.mutate)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := ociFailedWith(t, ns, tt.name, sourcev1.FetchFailedCondition, tt.reason)
			if msg := conditions.GetMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(msg, tt.message) {
				t.Errorf("FetchFailed message %q does not contain %q", msg, tt.message)
			}
			o = waitFailedAsFlux[*sourcev1.OCIRepository](t, ns, tt.name, sourcev1.FetchFailedCondition, tt.reason, false)
			if o.Status.Artifact != nil {
				t.Errorf("artifact %v without a pull", o.Status.Artifact)
			}
		})
	}
	if m := conditions.GetMessage(ociGet(t, ns, "sa-not-bound"), sourcev1.FetchFailedCondition); !strings.Contains(m, "PERMISSION_DENIED") {
		t.Errorf("sa-not-bound: IAM Credentials' refusal is not in %q", m)
	}
}

// TestOCIRepositoryCloudGCPMetadataFails fails with Flux's reason and
// message when the metadata server cannot issue the controller's token,
// and recovers once it can. The server fails for the whole process, so
// the test is not parallel; the proxy gives the object a token cache key
// of its own, so a token cached by another test cannot hide the failure.
func TestOCIRepositoryCloudGCPMetadataFails(t *testing.T) {
	gcpControllerIdentity(t)
	ns := newNamespace(t)
	repo := gcpProject + "/flux/" + ns
	digest := gcp.europe.PushFiles(t, repo, "v1", map[string]string{"app.yaml": "metadata"})
	proxy := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "proxy"},
		StringData: map[string]string{"address": cloud.Proxy.URL()}}
	if err := env.Client.Create(context.Background(), proxy); err != nil {
		t.Fatal(err)
	}
	gcp.srv.SetFailing(true)
	t.Cleanup(func() { gcp.srv.SetFailing(false) })
	ociCloudNew(t, ns, "metadata-fails", gcp.europe.URL(repo), sourcev1.GoogleOCIProvider, func(o *sourcev1.OCIRepository) {
		o.Spec.ProxySecretRef = &meta.LocalObjectReference{Name: "proxy"}
	})
	o := waitFailedAsFlux[*sourcev1.OCIRepository](t, ns, "metadata-fails", sourcev1.FetchFailedCondition, sourcev1.AuthenticationFailedReason, false)
	want := "failed to get credential from gcp: failed to get access token for artifact registry: failed to create provider access token for the controller"
	if msg := conditions.GetMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(msg, want) || !strings.Contains(msg, "503") {
		t.Errorf("FetchFailed message %q does not contain %q and the metadata server's 503", msg, want)
	}
	if o.Status.Artifact != nil {
		t.Errorf("artifact %v without a pull", o.Status.Artifact)
	}
	gcp.srv.SetFailing(false)
	ociRequestReconcile(t, ns, "metadata-fails")
	o = ociReadyAt(t, ns, "metadata-fails", "v1@"+digest.String())
	ociCheckArtifact(t, o, digest)
}

// TestHelmChartOCICloudGCP pulls a chart from an oci HelmRepository in
// Artifact Registry with the controller's identity, as Flux's HelmChart
// reconciler does (its cosign signature read with the same token), and fails with Flux's reason and message where the
// provider refuses the registry or the registry the token.
func TestHelmChartOCICloudGCP(t *testing.T) {
	gcpControllerIdentity(t)
	ns := helmNamespace(t)
	repo := gcpProject + "/charts/" + ns
	pushed := helmserver.Package(t, helmserver.ChartSpec{Name: "app", Version: "1.0.0"})
	digest := gcp.europe.PushChart(t, repo+"/app", "1.0.0", pushed)
	// Verification reads the signature with the provider's credentials.
	key := ocisign.NewCosignKey(t)
	ocisign.CosignAttach(t, gcp.europe.Registry, repo+"/app", digest, digest, key.Signer)
	newHelmSecret(t, ns, "cosign", map[string]string{"cosign.pub": string(key.Public)})
	helmPushChart(t, gcp.us.Registry, repo, "1.0.0", helmserver.ChartSpec{Name: "app", Version: "1.0.0"})
	cloudRepo := func(name, url, provider string) {
		helmOCIRepository(t, ns, name, url, func(o *sourcev1.HelmRepository) {
			o.Spec.Insecure = false
			o.Spec.Provider = provider
		})
	}
	cloudRepo("gcp", gcp.europe.URL(repo), sourcev1.GoogleOCIProvider)
	cloudRepo("aws", gcp.europe.URL(repo), sourcev1.AmazonOCIProvider)
	cloudRepo("azure", gcp.europe.URL(repo), sourcev1.AzureOCIProvider)
	cloudRepo("token-refused", gcp.us.URL(repo), sourcev1.GoogleOCIProvider)

	o := helmReady(t, newHelmChart(t, ns, "gcp", sourcev1.HelmRepositoryKind, "gcp", "app", func(o *sourcev1.HelmChart) {
		o.Spec.Version = "1.x"
		o.Spec.Verify = &sourcev1.HelmChartVerification{Provider: "cosign", SecretRef: &meta.LocalObjectReference{Name: "cosign"}}
	}), "1.0.0")
	helmCheckChartArtifact(t, o, "app", "1.0.0")
	if c := conditions.Get(o, sourcev1.SourceVerifiedCondition); c == nil || c.Status != metav1.ConditionTrue || c.Message != "verified signature of version 1.0.0" {
		t.Errorf("SourceVerified %+v, want True 'verified signature of version 1.0.0'", c)
	}
	if _, data := helmLoadArtifact(t, o); !bytes.Equal(data, pushed) {
		t.Fatal("pulled chart is not stored as pushed")
	}
	download(t, o.Status.Artifact)

	for source, msg := range map[string]string{
		"aws":           "unable to get authentication data from OIDC: invalid AWS registry: 'europe-docker.pkg.dev'",
		"azure":         "unable to get authentication data from OIDC: invalid Azure registry: 'europe-docker.pkg.dev'",
		"token-refused": "401",
	} {
		t.Run(source, func(t *testing.T) {
			o := helmFailedWithMessage(t, newHelmChart(t, ns, source, sourcev1.HelmRepositoryKind, source, "app", nil),
				sourcev1.FetchFailedCondition, sourcev1.AuthenticationFailedReason, msg)
			if o.Status.Artifact != nil || conditions.IsTrue(o, meta.StalledCondition) {
				t.Errorf("artifact %v, conditions %v: want none and not stalled", o.Status.Artifact, o.Status.Conditions)
			}
		})
	}
}
