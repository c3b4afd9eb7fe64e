package reconcile

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sourceraft/sourceraft/internal/azureserver"
	"github.com/sourceraft/sourceraft/internal/testproxy"
)

// The Azure hosts the stand-ins answer as.
const (
	entraHost  = "login.microsoftonline.com"
	devOpsHost = "dev.azure.com"
)

// The ServiceAccount annotations Azure workload identity reads.
const (
	azureClientIDAnnotation = "azure.workload.identity/client-id"
	azureTenantIDAnnotation = "azure.workload.identity/tenant-id"
)

var (
	// entra is the Entra ID stand-in, served as login.microsoftonline.com.
	entra *azureserver.Server
	// devOps serves the git server's repositories as dev.azure.com.
	devOps *devOpsServer
	// entraAddr and devOpsAddr are where they listen, for the routes of
	// the tests' own proxies.
	entraAddr, devOpsAddr string
)

// startAzure starts the Entra ID and Azure DevOps stand-ins on cloud, the
// Entra one reviewing client assertions with the test cluster; cloud's
// Close stops them.
func startAzure() error {
	var err error
	if entra, err = azureserver.New(azureserver.Options{Kube: env.Client}); err != nil {
		return err
	}
	srv, err := cloud.Serve(entra, entraHost)
	if err != nil {
		return err
	}
	entraAddr = srv.Listener.Addr().String()
	devOps = &devOpsServer{members: map[string]bool{}, refused: map[string]int{}}
	if srv, err = cloud.Serve(devOps, devOpsHost); err != nil {
		return err
	}
	devOpsAddr = srv.Listener.Addr().String()
	return nil
}

// devOpsServer stands in for Azure DevOps' Git over HTTPS: the git
// server's repositories, served only to bearer tokens that are Entra
// access tokens for Azure DevOps (the stand-in's, current) of apps the
// organization admitted. No basic auth, no static token.
type devOpsServer struct {
	mu sync.Mutex
	// members are the admitted apps, tenant/client; refused counts the
	// requests of apps with valid tokens that are not members.
	members map[string]bool
	refused map[string]int
}

// admit makes the app clientID of tenantID a member of the organization.
func (d *devOpsServer) admit(tenantID, clientID string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.members[tenantID+"/"+clientID] = true
}

// refusedTo is how many requests of the app with a valid token were
// refused for it not being a member.
func (d *devOpsServer) refusedTo(tenantID, clientID string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.refused[tenantID+"/"+clientID]
}

func (d *devOpsServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	unauthorized := func(msg string) {
		w.Header().Set("WWW-Authenticate", "Bearer authorization_uri=https://"+entraHost+"/common")
		http.Error(w, msg, http.StatusUnauthorized)
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		unauthorized("TF400813: Resource not available for anonymous access. Client authentication required.")
		return
	}
	claims, err := entra.Verify(token, azureserver.ScopeDevOps)
	if err != nil {
		unauthorized("TF400813: The access token is not valid: " + err.Error())
		return
	}
	app := claims.TenantID + "/" + claims.AppID
	d.mu.Lock()
	member := d.members[app]
	if !member {
		d.refused[app]++
	}
	d.mu.Unlock()
	if !member {
		unauthorized(fmt.Sprintf("TF400813: The user '%s' is not authorized to access this resource.", claims.AppID))
		return
	}
	gitSrv.backend.ServeHTTP(w, r)
}

// devOpsRepo creates a repository the DevOps stand-in serves, with one
// commit of files, and returns its URL and the commit's SHA.
func devOpsRepo(t *testing.T, name string, files map[string]string) (*gitRepo, string, string) {
	t.Helper()
	const scope = "org/project/_git"
	repo := gitSrv.newRepo(t, scope, name)
	sha := repo.commit("for azure", files)
	return repo, "https://" + devOpsHost + "/" + scope + "/" + name + ".git", sha
}

// routeAzure makes p carry the Azure host names to the stand-ins, as a
// proxy reaching Azure would.
func routeAzure(p *testproxy.Proxy) {
	p.Route(entraHost+":443", entraAddr)
	p.Route(devOpsHost+":443", devOpsAddr)
}

// azureServiceAccount creates the ServiceAccount ns/name, annotated with
// the Azure identity when tenantID or clientID is set.
func azureServiceAccount(t *testing.T, ns, name, tenantID, clientID string) *corev1.ServiceAccount {
	t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: map[string]string{}}}
	if tenantID != "" {
		sa.Annotations[azureTenantIDAnnotation] = tenantID
	}
	if clientID != "" {
		sa.Annotations[azureClientIDAnnotation] = clientID
	}
	return createObject(t, sa, nil)
}

// azureIdentity is the tenant and client IDs of a test's app, unique to
// ns so that tokens cached by other tests never stand in for its own.
func azureIdentity(ns, app string) (tenantID, clientID string) {
	return "tenant-" + ns, app + "-" + ns
}

// withAzure sets provider azure and, when not empty, serviceAccountName.
func withAzure(serviceAccount string) func(*sourcev1.GitRepository) {
	return func(o *sourcev1.GitRepository) {
		o.Spec.Provider = sourcev1.GitProviderAzure
		o.Spec.ServiceAccountName = serviceAccount
	}
}

// checkAzureArtifact checks that the artifact of the Ready object ns/name
// is revision's, digest and size as its status says, holding the file
// azure.yaml with content.
func checkAzureArtifact(t *testing.T, ns, name, revision, content string) {
	t.Helper()
	o := readyAt(t, ns, name, revision)
	if files := untar(t, download(t, o.Status.Artifact)); files["azure.yaml"] != content {
		t.Errorf("artifact files %v, azure.yaml %q", fileNames(files), files["azure.yaml"])
	}
}

// failedAzure waits for the object ns/name to fail its fetch with reason
// and checks that it did not stall and stored nothing.
func failedAzure(t *testing.T, ns, name, reason string) *sourcev1.GitRepository {
	t.Helper()
	o := failedWith(t, ns, name, sourcev1.FetchFailedCondition, reason)
	if conditions.IsTrue(o, meta.StalledCondition) {
		t.Errorf("stalled: %s", conditions.GetMessage(o, meta.StalledCondition))
	}
	if o.Status.Artifact != nil {
		t.Errorf("artifact %v", o.Status.Artifact)
	}
	if arts := storedArtifacts(t, ns, name); len(arts) != 0 {
		t.Errorf("store holds %d artifacts", len(arts))
	}
	return o
}

// Object-level workload identity: each GitRepository exchanges its own
// ServiceAccount's token for an Entra access token, the bearer token of
// its fetch.
func TestGitRepositoryAzure(t *testing.T) {
	ns := namespaceFor(t, "azure")
	tenant, client := azureIdentity(ns, "reader")
	_, outsider := azureIdentity(ns, "outsider")
	entra.Federate(tenant, client, ns, "reader")
	entra.Federate(tenant, client, ns, "proxied")
	entra.Federate(tenant, outsider, ns, "outsider")
	devOps.admit(tenant, client)
	azureServiceAccount(t, ns, "reader", tenant, client)
	azureServiceAccount(t, ns, "proxied", tenant, client)
	azureServiceAccount(t, ns, "outsider", tenant, outsider)
	// Annotated with the app, but the app trusts other ServiceAccounts.
	azureServiceAccount(t, ns, "untrusted", tenant, client)
	azureServiceAccount(t, ns, "other-tenant", "tenant-nowhere-"+ns, client)
	azureServiceAccount(t, ns, "other-client", tenant, "unregistered-"+ns)
	azureServiceAccount(t, ns, "bare", "", "")
	azureServiceAccount(t, ns, "no-client", tenant, "")
	repo, url, sha := devOpsRepo(t, "azure-"+ns, map[string]string{"azure.yaml": "first"})
	// A refused exchange is retried by the SDK for about 20 s, holding the
	// token cache (one lock for every key) meanwhile: the proxy's part is
	// shown by what it carries, not by a proxy refusing the exchange.
	p := startProxy(t, proxyUser, proxyPass)
	routeAzure(p)
	bucketSecret(t, ns, "good", map[string]string{"address": p.URL(), "username": proxyUser, "password": proxyPass})
	// The refused objects would retry for the rest of the run.
	t.Cleanup(func() { deleteGitRepositories(t, ns) })

	newGitRepository(t, ns, "good", url, withAzure("reader"))
	t.Run("service account token exchanged for the fetch's bearer token", func(t *testing.T) {
		checkAzureArtifact(t, ns, "good", "master@sha1:"+sha, "first")
		if n := entra.Issued(tenant, client); n != 1 {
			t.Errorf("%d access tokens issued, want 1", n)
		}
	})
	t.Run("token is cached across reconciles", func(t *testing.T) {
		sha2 := repo.commit("second", map[string]string{"azure.yaml": "second"})
		requestReconcile(t, ns, "good")
		checkAzureArtifact(t, ns, "good", "master@sha1:"+sha2, "second")
		if n := entra.Issued(tenant, client); n != 1 {
			t.Errorf("%d access tokens issued after a second reconcile, want 1 (the cached one)", n)
		}
	})

	// The secret's credentials give way to the token: the DevOps stand-in
	// refuses basic auth.
	bucketSecret(t, ns, "basic", map[string]string{"username": gitUser, "password": gitPass})
	newGitRepository(t, ns, "with-secret", url, func(o *sourcev1.GitRepository) {
		withAzure("reader")(o)
		o.Spec.SecretRef = &meta.LocalObjectReference{Name: "basic"}
	})
	newGitRepository(t, ns, "through-proxy", url, func(o *sourcev1.GitRepository) {
		withAzure("proxied")(o)
		o.Spec.ProxySecretRef = proxyRef("good")
	})
	t.Run("token replaces the secret's credentials", func(t *testing.T) {
		o := readyAt(t, ns, "with-secret", "")
		download(t, o.Status.Artifact)
	})
	t.Run("token exchange and fetch go through the proxy", func(t *testing.T) {
		o := readyAt(t, ns, "through-proxy", "")
		download(t, o.Status.Artifact)
		for _, host := range []string{entraHost + ":443", devOpsHost + ":443"} {
			if p.CarriedTo(host) == 0 {
				t.Errorf("the proxy carried nothing to %s; carried %s", host, p.Hosts())
			}
		}
	})

	for _, tt := range []struct{ name, serviceAccount, message string }{
		{"no-service-account", "missing", "failed to get service account '" + ns + "/missing': serviceaccounts \"missing\" not found"},
		{"no-annotations", "bare", "failed to get provider identity from service account '" + ns + "/bare' annotations: azure tenant ID is not set in the service account annotation " + azureTenantIDAnnotation},
		{"no-client-id", "no-client", "failed to get provider identity from service account '" + ns + "/no-client' annotations: azure client ID is not set in the service account annotation " + azureClientIDAnnotation},
	} {
		newGitRepository(t, ns, tt.name, url, withAzure(tt.serviceAccount))
		t.Run(tt.name, func(t *testing.T) {
			o := failedAzure(t, ns, tt.name, sourcev1.AuthenticationFailedReason)
			want := "failed to configure authentication options: failed to get access token for Git repository: " + tt.message
			if msg := conditionMessage(o, sourcev1.FetchFailedCondition); msg != want {
				t.Errorf("FetchFailed message %q, want %q", msg, want)
			}
		})
	}

	// Entra refuses the exchange: the app does not trust the
	// ServiceAccount, the tenant or the app does not exist.
	for _, tt := range []struct {
		name, serviceAccount string
		aadsts               []string
	}{
		{"untrusted", "untrusted", []string{"AADSTS70021: No matching federated identity record found for presented assertion.",
			"Assertion Subject: 'system:serviceaccount:" + ns + ":untrusted'. Assertion Audience: '" + azureserver.Audience + "'."}},
		{"other-tenant", "other-tenant", []string{"AADSTS90002: Tenant 'tenant-nowhere-" + ns + "' not found."}},
		{"other-client", "other-client", []string{"AADSTS700016: Application with identifier 'unregistered-" + ns + "' was not found in the directory '" + tenant + "'."}},
	} {
		newGitRepository(t, ns, tt.name, url, withAzure(tt.serviceAccount))
		t.Run("entra refuses "+tt.name, func(t *testing.T) {
			o := failedAzure(t, ns, tt.name, sourcev1.AuthenticationFailedReason)
			msg := conditionMessage(o, sourcev1.FetchFailedCondition)
			prefix := "failed to configure authentication options: failed to get access token for Git repository: " +
				"failed to create provider access token for service account '" + ns + "/" + tt.serviceAccount + "': "
			if !strings.HasPrefix(msg, prefix) {
				t.Errorf("FetchFailed message %q, want %q...", msg, prefix)
			}
			for _, want := range tt.aadsts {
				if !strings.Contains(msg, want) {
					t.Errorf("FetchFailed message %q does not say %q", msg, want)
				}
			}
			eventSink.await(t, ns, tt.name, sourcev1.AuthenticationFailedReason, 10*time.Second)
		})
	}

	newGitRepository(t, ns, "not-a-member", url, withAzure("outsider"))
	t.Run("devops refuses an app that is not a member", func(t *testing.T) {
		o := failedAzure(t, ns, "not-a-member", sourcev1.GitOperationFailedReason)
		msg := conditionMessage(o, sourcev1.FetchFailedCondition)
		if !strings.HasPrefix(msg, "failed to checkout and determine revision: ") || !strings.Contains(msg, "authentication required") {
			t.Errorf("FetchFailed message %q", msg)
		}
		// Entra issued the token; the Git server refused it.
		if entra.Issued(tenant, outsider) == 0 || devOps.refusedTo(tenant, outsider) == 0 {
			t.Errorf("%d tokens issued to the outsider, %d of its requests refused", entra.Issued(tenant, outsider), devOps.refusedTo(tenant, outsider))
		}
	})

	t.Run("serviceAccountName needs provider azure or aws", func(t *testing.T) {
		obj := &sourcev1.GitRepository{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "generic-with-sa"},
			Spec:       sourcev1.GitRepositorySpec{URL: url, Interval: metav1.Duration{Duration: time.Hour}, ServiceAccountName: "reader"},
		}
		err := env.Client.Create(context.Background(), obj)
		if err == nil || !strings.Contains(err.Error(), "serviceAccountName can only be set when provider is 'azure' or 'aws'") {
			t.Errorf("create error %v", err)
		}
	})
}

// deleteGitRepositories deletes the GitRepositories of ns.
func deleteGitRepositories(t *testing.T, ns string) {
	t.Helper()
	if err := env.Client.DeleteAllOf(context.Background(), &sourcev1.GitRepository{}, client.InNamespace(ns)); err != nil {
		t.Error(err)
	}
}

// azureControllerIdentity gives the controller the identity of the app
// clientID of tenantID, presenting sa's token, in the environment Azure's
// workload identity webhook gives its pod (AZURE_CLIENT_ID,
// AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE with its ServiceAccount's
// token, AZURE_AUTHORITY_HOST). The variables are the process's, so they
// are set only while the test, which must run alone, does.
func azureControllerIdentity(t *testing.T, sa *corev1.ServiceAccount, tenant, client string) {
	t.Helper()
	expiry := int64(time.Hour.Seconds())
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences: []string{azureserver.Audience}, ExpirationSeconds: &expiry,
	}}
	if err := env.Client.SubResource("token").Create(context.Background(), sa, tr); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "azure-identity-token")
	if err := os.WriteFile(tokenFile, []byte(tr.Status.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"AZURE_CLIENT_ID": client, "AZURE_TENANT_ID": tenant,
		"AZURE_FEDERATED_TOKEN_FILE": tokenFile, "AZURE_AUTHORITY_HOST": "https://" + entraHost + "/",
	} {
		t.Setenv(k, v)
	}
}

// Controller-level workload identity: without serviceAccountName the
// controller authenticates as itself (azureControllerIdentity).
func TestGitRepositoryAzureController(t *testing.T) {
	ns := namespaceFor(t, "azure-ctl")
	tenant, client := azureIdentity(ns, "source-controller")
	azureControllerIdentity(t, azureServiceAccount(t, ns, "source-controller", "", ""), tenant, client)
	_, url, sha := devOpsRepo(t, "azure-"+ns, map[string]string{"azure.yaml": "controller"})
	devOps.admit(tenant, client)

	// The tenant and its app are registered only once the first attempt
	// failed.
	newGitRepository(t, ns, "controller", url, withAzure(""))
	// Without the variables it would fail for the rest of the run.
	t.Cleanup(func() { deleteGitRepositories(t, ns) })
	t.Run("entra refuses an unknown controller identity", func(t *testing.T) {
		o := failedAzure(t, ns, "controller", sourcev1.AuthenticationFailedReason)
		msg := conditionMessage(o, sourcev1.FetchFailedCondition)
		if !strings.HasPrefix(msg, "failed to configure authentication options: failed to get access token for Git repository: failed to create provider access token for the controller: ") ||
			!strings.Contains(msg, "WorkloadIdentityCredential authentication failed.") || !strings.Contains(msg, "AADSTS90002: Tenant '"+tenant+"' not found.") {
			t.Errorf("FetchFailed message %q", msg)
		}
	})
	t.Run("controller's token exchanged for the fetch's bearer token", func(t *testing.T) {
		entra.Federate(tenant, client, ns, "source-controller")
		requestReconcile(t, ns, "controller")
		checkAzureArtifact(t, ns, "controller", "master@sha1:"+sha, "controller")
		if n := entra.Issued(tenant, client); n != 1 {
			t.Errorf("%d access tokens issued to the controller, want 1", n)
		}
	})
}
