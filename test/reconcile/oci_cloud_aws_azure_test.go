package reconcile

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"strings"
	"testing"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	gcrv1 "github.com/google/go-containerregistry/pkg/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sourceraft/sourceraft/internal/azureserver"
	"github.com/sourceraft/sourceraft/internal/ecrserver"
	"github.com/sourceraft/sourceraft/internal/helmserver"
	"github.com/sourceraft/sourceraft/internal/minioserver"
	"github.com/sourceraft/sourceraft/internal/ociregistry"
)

// ecrAccount is the AWS account of the ECR registry; its region is
// awsRegion, so that the STS pkg/auth asks (the registry's region's) is
// awsMinIO's.
const ecrAccount = "210987654321"

// acrHost is the Azure Container Registry of the tests.
const acrHost = "sourceraft.azurecr.io"

var (
	// ecr is Amazon ECR: its API, which issues the registry's password to
	// identities it allows, and the registry.
	ecr struct {
		api *ecrserver.Server
		reg *ociregistry.Named
	}
	// acr is Azure Container Registry: a registry letting in only the
	// refresh token its token exchange issues for Entra access tokens.
	acr struct {
		exchange *azureserver.ACR
		reg      *ociregistry.Named
	}
)

// startECRAndACR puts the ECR API (api.ecr.<awsRegion>.amazonaws.com),
// an ECR registry and an ACR registry with its token exchange behind
// cloud's proxy. After startAzure: the exchange takes Entra's tokens.
func startECRAndACR() (func(), error) {
	var stop []func()
	cleanup := func() {
		for _, f := range stop {
			f()
		}
	}
	password := make([]byte, 16)
	if _, err := rand.Read(password); err != nil {
		return cleanup, err
	}
	// The STS is a MinIO of this package's (awsMinIO, one per test);
	// ECR learns from its session token who the credentials were issued
	// to.
	ecr.api = ecrserver.New(ecrserver.Options{
		Region: awsRegion, Account: ecrAccount, Password: hex.EncodeToString(password),
		Sessions: func(token string) (string, string, error) {
			s, err := minioserver.VerifySessionToken(token)
			return s.AccessKey, s.Subject, err
		},
	})
	if _, err := cloud.Serve(ecr.api, ecr.api.Host()); err != nil {
		return cleanup, err
	}
	reg, err := startCloudRegistry(ecr.api.Registry(), "AWS", hex.EncodeToString(password))
	if err != nil {
		return cleanup, err
	}
	stop = append(stop, reg.Close)
	ecr.reg = reg

	if acr.exchange, err = entra.NewACR(acrHost); err != nil {
		return cleanup, err
	}
	reg, err = startCloudRegistry(acrHost, azureserver.ACRUser, acr.exchange.RefreshToken,
		ociregistry.Route{Pattern: azureserver.ExchangePattern, Handler: acr.exchange})
	if err != nil {
		return cleanup, err
	}
	stop = append(stop, reg.Close)
	acr.reg = reg
	return cleanup, nil
}

// startCloudRegistry starts a registry at host, its certificate from
// cloud's CA and host:443 routed to it, letting in user with password.
func startCloudRegistry(host, user, password string, routes ...ociregistry.Route) (*ociregistry.Named, error) {
	pair, err := cloud.CA.Issue(host, []string{host}, []net.IP{net.ParseIP("127.0.0.1")})
	if err != nil {
		return nil, err
	}
	reg, err := ociregistry.StartNamed(host, pair, user, password, routes...)
	if err != nil {
		return nil, err
	}
	cloud.Route(host+":443", reg.Addr)
	return reg, nil
}

// ociCloudRefusal is an OCIRepository the provider's chain refuses, with
// Flux's reason and what its message holds.
type ociCloudRefusal struct {
	name, serviceAccount string
	reason               string
	message              []string
}

// ociCloudPulls creates an OCIRepository of provider for url as
// serviceAccount and checks that it is Ready with digest's artifact
// holding files.
func ociCloudPulls(t *testing.T, ns, name, url, provider, serviceAccount string, digest gcrv1.Hash, files map[string]string) {
	t.Helper()
	ociCloudNew(t, ns, name, url, provider, func(o *sourcev1.OCIRepository) { o.Spec.ServiceAccountName = serviceAccount })
	o := ociReadyAt(t, ns, name, "v1@"+digest.String())
	got := untar(t, ociCheckArtifact(t, o, digest))
	for f, content := range files {
		if got[f] != content {
			t.Errorf("artifact files %v, %s %q", fileNames(got), f, got[f])
		}
	}
}

// ociCloudRefused creates the OCIRepositories of tests, of provider for
// url, and checks that each fails as Flux does, retried, without an
// artifact. They are deleted when the test ends, not to retry for the
// rest of the run.
func ociCloudRefused(t *testing.T, ns, url, provider string, tests []ociCloudRefusal) {
	t.Helper()
	t.Cleanup(func() {
		if err := env.Client.DeleteAllOf(context.Background(), &sourcev1.OCIRepository{}, client.InNamespace(ns)); err != nil {
			t.Error(err)
		}
	})
	for _, tt := range tests {
		ociCloudNew(t, ns, tt.name, url, provider, func(o *sourcev1.OCIRepository) { o.Spec.ServiceAccountName = tt.serviceAccount })
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := waitFailedAsFlux[*sourcev1.OCIRepository](t, ns, tt.name, sourcev1.FetchFailedCondition, tt.reason, false)
			msg := conditions.GetMessage(o, sourcev1.FetchFailedCondition)
			for _, want := range tt.message {
				if !strings.Contains(msg, want) {
					t.Errorf("FetchFailed message %q does not contain %q", msg, want)
				}
			}
			if o.Status.Artifact != nil || len(ociStored(t, ns, tt.name)) != 0 {
				t.Errorf("artifact %v without a pull", o.Status.Artifact)
			}
		})
	}
}

// TestOCIRepositoryCloudAWS pulls from ECR as a ServiceAccount of the
// object's namespace (IRSA: its token exchanged at STS, MinIO here, for
// temporary credentials; those sign ECR's GetAuthorizationToken, whose
// token is the registry's password), and fails with Flux's reason and
// messages, without an artifact, where STS refuses the ServiceAccount or
// ECR its credentials.
func TestOCIRepositoryCloudAWS(t *testing.T) {
	m := awsMinIO(t)
	ns := newNamespace(t)
	repo := "flux/" + ns
	files := map[string]string{"app.yaml": "from ecr"}
	digest := ecr.reg.PushFiles(t, repo, "v1", files)
	subject := func(name string) string { return "system:serviceaccount:" + ns + ":" + name }
	// MinIO's STS issues credentials only to a subject with a policy of
	// its name; which does not matter to ECR.
	for _, sa := range []string{"puller", "denied"} {
		awsServiceAccount(t, ns, sa, awsRoleARN)
		awsReadPolicy(t, m, ns, sa, "none")
	}
	awsServiceAccount(t, ns, "unmapped", awsRoleARN)
	ecr.api.Allow(subject("puller"))

	ociCloudPulls(t, ns, "object", ecr.reg.URL(repo), sourcev1.AmazonOCIProvider, "puller", digest, files)
	if n := ecr.api.Issued(subject("puller")); n == 0 {
		t.Errorf("ECR issued no authorization token to %s", subject("puller"))
	}

	ociCloudRefused(t, ns, ecr.reg.URL(repo), sourcev1.AmazonOCIProvider, []ociCloudRefusal{
		{"ecr-denied", "denied", sourcev1.AuthenticationFailedReason, []string{
			"failed to get credential from aws: failed to create artifact registry credentials: operation error ECR: GetAuthorizationToken, https response error StatusCode: 400",
			"api error AccessDeniedException: User: " + subject("denied") + " is not authorized to perform: ecr:GetAuthorizationToken"}},
		{"sts-refused", "unmapped", sourcev1.AuthenticationFailedReason, []string{
			"failed to get credential from aws: failed to get access token for artifact registry: failed to create provider access token for service account '" + ns + "/unmapped': operation error STS: AssumeRoleWithWebIdentity",
			"None of the given policies (`" + subject("unmapped") + "`) are defined"}},
	})
	if n := ecr.api.Issued(subject("denied")); n != 0 {
		t.Errorf("ECR issued %d authorization tokens to %s", n, subject("denied"))
	}
}

// TestOCIRepositoryCloudAzure pulls from ACR as a ServiceAccount of the
// object's namespace (Azure workload identity: its token exchanged at
// Entra for an access token for ACR, that at the registry's token
// exchange for the refresh token that is its password), and fails with
// Flux's reason and messages, without an artifact, where Entra refuses
// the ServiceAccount or ACR the app.
func TestOCIRepositoryCloudAzure(t *testing.T) {
	ns := newNamespace(t)
	repo := "flux/" + ns
	files := map[string]string{"app.yaml": "from acr"}
	digest := acr.reg.PushFiles(t, repo, "v1", files)
	tenant, puller := azureIdentity(ns, "puller")
	_, outsider := azureIdentity(ns, "outsider")
	entra.Federate(tenant, puller, ns, "puller")
	entra.Federate(tenant, outsider, ns, "outsider")
	acr.exchange.Grant(tenant, puller)
	azureServiceAccount(t, ns, "puller", tenant, puller)
	azureServiceAccount(t, ns, "outsider", tenant, outsider)
	// Annotated with the puller app, which trusts another ServiceAccount.
	azureServiceAccount(t, ns, "untrusted", tenant, puller)

	ociCloudPulls(t, ns, "object", acr.reg.URL(repo), sourcev1.AzureOCIProvider, "puller", digest, files)
	if n := acr.exchange.Exchanged(tenant, puller); n == 0 {
		t.Error("the registry exchanged no access token of the puller app")
	}

	ociCloudRefused(t, ns, acr.reg.URL(repo), sourcev1.AzureOCIProvider, []ociCloudRefusal{
		{"acr-denied", "outsider", sourcev1.AuthenticationFailedReason, []string{
			"failed to get credential from azure: failed to create artifact registry credentials: POST https://" + acrHost + "/oauth2/exchange",
			"RESPONSE 401", "the app '" + outsider + "' of tenant '" + tenant + "' has no access to registry " + acrHost}},
		{"entra-refused", "untrusted", sourcev1.AuthenticationFailedReason, []string{
			"failed to get credential from azure: failed to get access token for artifact registry: failed to create provider access token for service account '" + ns + "/untrusted'",
			"AADSTS70021: No matching federated identity record found for presented assertion."}},
	})
	// The registry lets in only the exchange's refresh token.
	ociCloudNew(t, ns, "anonymous", acr.reg.URL(repo), sourcev1.GenericOCIProvider, nil)
	o := waitFailedAsFlux[*sourcev1.OCIRepository](t, ns, "anonymous", sourcev1.FetchFailedCondition, sourcev1.OCIPullFailedReason, false)
	if msg := conditions.GetMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(msg, "UNAUTHORIZED") || o.Status.Artifact != nil {
		t.Errorf("anonymous pull: FetchFailed message %q, artifact %v", msg, o.Status.Artifact)
	}
	if n := acr.exchange.Exchanged(tenant, outsider); n != 0 {
		t.Errorf("the registry exchanged %d access tokens of the outsider app", n)
	}
	if entra.Issued(tenant, outsider) == 0 {
		t.Error("Entra issued the outsider app no token: the registry's refusal was not tested")
	}
}

// TestHelmChartOCICloudAzure pulls a chart from an oci HelmRepository in
// ACR with the controller's identity (HelmRepositories have no
// serviceAccountName), as Flux's HelmChart reconciler does: it fails with
// Flux's reason and message, without an artifact, while the registry
// refuses the controller's app, and pulls once the app may.
func TestHelmChartOCICloudAzure(t *testing.T) {
	ns := helmNamespace(t)
	tenant, app := azureIdentity(ns, "source-controller")
	entra.Federate(tenant, app, ns, "source-controller")
	azureControllerIdentity(t, azureServiceAccount(t, ns, "source-controller", "", ""), tenant, app)
	repo := "charts/" + ns
	pushed := helmPushChart(t, acr.reg.Registry, repo, "1.0.0", helmserver.ChartSpec{Name: "app", Version: "1.0.0"})
	helmOCIRepository(t, ns, "acr", acr.reg.URL(repo), func(o *sourcev1.HelmRepository) {
		o.Spec.Insecure = false
		o.Spec.Provider = sourcev1.AzureOCIProvider
	})
	// Without the identity's variables it would fail for the rest of the
	// run.
	t.Cleanup(func() {
		if err := env.Client.DeleteAllOf(context.Background(), &sourcev1.HelmChart{}, client.InNamespace(ns)); err != nil {
			t.Error(err)
		}
	})

	obj := newHelmChart(t, ns, "app", sourcev1.HelmRepositoryKind, "acr", "app", nil)
	o := helmFailedWithMessage(t, obj, sourcev1.FetchFailedCondition, sourcev1.AuthenticationFailedReason,
		"unable to get authentication data from OIDC: failed to create artifact registry credentials: POST https://"+acrHost+"/oauth2/exchange")
	if msg := conditions.GetMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(msg, "the app '"+app+"' of tenant '"+tenant+"' has no access") {
		t.Errorf("FetchFailed message %q does not hold the registry's refusal", msg)
	}
	if o.Status.Artifact != nil || conditions.IsTrue(o, meta.StalledCondition) {
		t.Errorf("artifact %v, conditions %v: want none and not stalled", o.Status.Artifact, o.Status.Conditions)
	}

	acr.exchange.Grant(tenant, app)
	requestReconcileOf[*sourcev1.HelmChart](t, ns, "app")
	o = helmReady(t, obj, "1.0.0")
	helmCheckChartArtifact(t, o, "app", "1.0.0")
	if _, data := helmLoadArtifact(t, o); !bytes.Equal(data, pushed) {
		t.Fatal("pulled chart is not stored as pushed")
	}
	if acr.exchange.Exchanged(tenant, app) == 0 {
		t.Error("the registry exchanged no access token of the controller's app")
	}
}
