package reconcile

import (
	"crypto/rand"
	"crypto/rsa"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"

	"github.com/sourceraft/sourceraft/internal/githubserver"
)

// The GitHub App the test GitHub knows.
const (
	ghAppID          = 4242
	ghInstallationID = 777
	ghOwner          = "sourceraft-org"
)

func TestGitHubApp(t *testing.T) {
	ns := newNamespace(t)
	// A GitHub Enterprise Server serving the git server's repositories only
	// to the installation tokens it minted.
	gh := githubserver.Start(t, githubserver.Options{AppID: ghAppID, InstallationID: ghInstallationID, Orgs: []string{ghOwner}, Git: gitSrv.backend})
	repo := gitSrv.newRepo(t, "github", "app-"+ns)
	sha := repo.commit("via app", map[string]string{"app.yaml": "github app"})
	url := gh.URL() + "/github/app-" + ns + ".git"
	otherKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	appSecret := func(name string, key *rsa.PrivateKey, extra map[string]string) {
		data := map[string]string{
			"githubAppID":      strconv.Itoa(ghAppID),
			"githubAppBaseURL": gh.APIURL(),
			"ca.crt":           string(gh.CA()),
		}
		if key != nil {
			data["githubAppPrivateKey"] = string(githubserver.EncodeKey(key))
		}
		for k, v := range extra {
			data[k] = v
		}
		bucketSecret(t, ns, name, data)
	}
	byID := map[string]string{"githubAppInstallationID": strconv.Itoa(ghInstallationID)}
	appSecret("app", gh.Key(), byID)
	appSecret("app-owner", gh.Key(), map[string]string{"githubAppInstallationOwner": ghOwner})
	appSecret("wrong-key", otherKey, byID)
	appSecret("no-key", nil, byID)
	appSecret("both", gh.Key(), map[string]string{"githubAppInstallationID": strconv.Itoa(ghInstallationID), "githubAppInstallationOwner": ghOwner})
	p, refusing := startProxy(t, proxyUser, proxyPass), startProxy(t, proxyUser, proxyPass)
	proxySecrets(t, ns, p, refusing)

	github := func(secret string) func(*sourcev1.GitRepository) {
		return func(o *sourcev1.GitRepository) {
			o.Spec.Provider = sourcev1.GitProviderGitHub
			if secret != "" {
				o.Spec.SecretRef = &meta.LocalObjectReference{Name: secret}
			}
		}
	}
	// First, before any token is cached: a proxy refusing the
	// credentials fails the token exchange, which must go through it.
	newGitRepository(t, ns, "proxy-refuses", url, func(o *sourcev1.GitRepository) {
		github("app")(o)
		o.Spec.ProxySecretRef = proxyRef("wrong")
	})
	t.Run("token exchange goes through the proxy", func(t *testing.T) {
		o := waitFailed[*sourcev1.GitRepository](t, ns, "proxy-refuses", sourcev1.FetchFailedCondition, sourcev1.AuthenticationFailedReason)
		msg := conditionMessage(o, sourcev1.FetchFailedCondition)
		// Flux's text: go-github's error for the exchange request.
		if !strings.HasPrefix(msg, "failed to configure authentication options: Post ") ||
			!strings.Contains(msg, "/app/installations/"+strconv.Itoa(ghInstallationID)+"/access_tokens") || !names407(msg) {
			t.Errorf("FetchFailed message %q", msg)
		}
		if host := hostOf(t, gh.URL()); refusing.RefusedTo(host) == 0 || refusing.CarriedTo(host) != 0 || gh.Exchanges() != 0 {
			t.Errorf("proxy refused %d and carried %d requests to %s, %d tokens minted",
				refusing.RefusedTo(host), refusing.CarriedTo(host), host, gh.Exchanges())
		}
		if o.Status.Artifact != nil {
			t.Errorf("artifact %v", o.Status.Artifact)
		}
	})
	newGitRepository(t, ns, "good", url, github("app"))

	t.Run("installation token fetches the repository", func(t *testing.T) {
		o := waitReady[*sourcev1.GitRepository](t, ns, "good", "master@sha1:"+sha)
		if files := untar(t, download(t, o.Status.Artifact)); files["app.yaml"] != "github app" {
			t.Errorf("artifact files %v", fileNames(files))
		}
		if n := gh.Exchanges(); n != 1 {
			t.Errorf("%d token exchanges, want 1", n)
		}
	})
	t.Run("token is cached across reconciles", func(t *testing.T) {
		sha2 := repo.commit("second", map[string]string{"app.yaml": "second"})
		requestReconcileOf[*sourcev1.GitRepository](t, ns, "good")
		waitReady[*sourcev1.GitRepository](t, ns, "good", "master@sha1:"+sha2)
		if n := gh.Exchanges(); n != 1 {
			t.Errorf("%d token exchanges after a second reconcile, want 1 (the cached token)", n)
		}
	})

	newGitRepository(t, ns, "owner", url, github("app-owner"))
	newGitRepository(t, ns, "through-proxy", url, func(o *sourcev1.GitRepository) {
		github("app")(o)
		o.Spec.ProxySecretRef = proxyRef("good")
	})
	newGitRepository(t, ns, "wrong-key", url, github("wrong-key"))
	newGitRepository(t, ns, "no-secret", url, github(""))
	newGitRepository(t, ns, "no-key", url, github("no-key"))
	newGitRepository(t, ns, "both", url, github("both"))
	newGitRepository(t, ns, "generic-with-app", url, func(o *sourcev1.GitRepository) {
		o.Spec.SecretRef = &meta.LocalObjectReference{Name: "app"}
	})

	t.Run("installation looked up by owner", func(t *testing.T) {
		o := waitReady[*sourcev1.GitRepository](t, ns, "owner", "")
		if !strings.HasPrefix(o.Status.Artifact.Revision, "master@sha1:") {
			t.Errorf("revision %q", o.Status.Artifact.Revision)
		}
	})
	t.Run("fetch goes through the proxy", func(t *testing.T) {
		waitReady[*sourcev1.GitRepository](t, ns, "through-proxy", "")
		// The token is cached by now: what the proxy carried is the fetch.
		if host := hostOf(t, gh.URL()); p.CarriedTo(host) == 0 {
			t.Fatalf("the proxy carried nothing to %s; carried %s", host, p.Hosts())
		}
	})
	t.Run("wrong private key", func(t *testing.T) {
		o := waitFailed[*sourcev1.GitRepository](t, ns, "wrong-key", sourcev1.FetchFailedCondition, sourcev1.AuthenticationFailedReason)
		msg := conditionMessage(o, sourcev1.FetchFailedCondition)
		if !strings.HasPrefix(msg, "failed to configure authentication options: ") || !strings.Contains(msg, "401") ||
			!strings.Contains(msg, "A JSON web token could not be decoded") {
			t.Errorf("FetchFailed message %q", msg)
		}
		if o.Status.Artifact != nil {
			t.Errorf("artifact %v stored with a refused app", o.Status.Artifact)
		}
		eventSink.await(t, ns, "wrong-key", sourcev1.AuthenticationFailedReason, 10*time.Second)
	})
	const noAppData = "secretRef with github app data must be specified when provider is set to github"
	for _, tt := range []struct {
		name, reason, message string
		stalled               bool
	}{
		{"no-secret", sourcev1.InvalidProviderConfigurationReason, noAppData, true},
		{"no-key", sourcev1.InvalidProviderConfigurationReason, noAppData, false},
		{"both", sourcev1.AuthenticationFailedReason, "failed to configure authentication options: only one of app installation owner or ID must be provided to use github app authentication", false},
		{"generic-with-app", sourcev1.InvalidProviderConfigurationReason, "secretRef '" + ns + "/app' has github app data but provider is not set to github", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := waitFailed[*sourcev1.GitRepository](t, ns, tt.name, sourcev1.FetchFailedCondition, tt.reason)
			if msg := conditionMessage(o, sourcev1.FetchFailedCondition); msg != tt.message {
				t.Errorf("FetchFailed message %q, want %q", msg, tt.message)
			}
			if conditions.IsTrue(o, meta.StalledCondition) != tt.stalled || o.Status.Artifact != nil {
				t.Errorf("stalled %v (want %v), artifact %v", conditions.IsTrue(o, meta.StalledCondition), tt.stalled, o.Status.Artifact)
			}
		})
	}
}
