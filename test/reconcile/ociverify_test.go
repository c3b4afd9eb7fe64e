package reconcile

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sourceraft/sourceraft/internal/helmserver"
	"github.com/sourceraft/sourceraft/internal/ociregistry"
	"github.com/sourceraft/sourceraft/internal/ocisign"
)

// ociVerifyFailed waits for a failed verification as Flux reports it:
// SourceVerified=False with reason VerificationError and a message that
// contains every one of msgs, and Ready=False with the same reason and message.
func ociVerifyFailed(t *testing.T, ns, name string, msgs ...string) *sourcev1.OCIRepository {
	t.Helper()
	return ociWaitFor(t, ns, name, 20*time.Second, "SourceVerified=False with '"+strings.Join(msgs, "' and '")+"'", func(o *sourcev1.OCIRepository) bool {
		c := conditions.Get(o, sourcev1.SourceVerifiedCondition)
		return c != nil && c.Status == metav1.ConditionFalse && c.Reason == sourcev1.VerificationError &&
			!slices.ContainsFunc(msgs, func(m string) bool { return !strings.Contains(c.Message, m) }) && c.ObservedGeneration == o.Generation &&
			conditions.IsFalse(o, meta.ReadyCondition) && conditions.GetReason(o, meta.ReadyCondition) == sourcev1.VerificationError &&
			conditions.GetMessage(o, meta.ReadyCondition) == c.Message
	})
}

// ociVerified checks SourceVerified=True as Flux sets it for revision.
func ociVerified(t *testing.T, o *sourcev1.OCIRepository, revision string) {
	t.Helper()
	c := conditions.Get(o, sourcev1.SourceVerifiedCondition)
	if c == nil || c.Status != metav1.ConditionTrue || c.Reason != meta.SucceededReason ||
		c.Message != "verified signature of revision "+revision || c.ObservedGeneration != o.Generation {
		t.Fatalf("SourceVerified %+v, want True/Succeeded 'verified signature of revision %s'", c, revision)
	}
}

// TestOCIVerifyCosignKeys verifies OCIRepository artifacts signed with
// cosign keys: a signature by any .pub key of the secret verifies; a
// signature by another key, no signature, or a signature moved from
// another manifest fails with VerificationError, stores nothing and
// keeps the previous artifact; a verified revision is not verified
// again until the revision or the spec changes, as in Flux.
func TestOCIVerifyCosignKeys(t *testing.T) {
	ns := newNamespace(t)
	reg := ociregistry.Shared(t).Open
	repo := "verify/" + ns
	trusted, other := ocisign.NewCosignKey(t), ocisign.NewCosignKey(t)
	newHelmSecret(t, ns, "cosign-keys", map[string]string{
		"other.pub": string(other.Public), "trusted.pub": string(trusted.Public), "readme.txt": "not a key",
	})
	newHelmSecret(t, ns, "trusted-only", map[string]string{"cosign.pub": string(trusted.Public)})
	newHelmSecret(t, ns, "no-keys", map[string]string{"readme.txt": "not a key"})

	d1 := reg.PushFiles(t, repo, "app", map[string]string{"app.yaml": "v: 1"}).String()
	ocisign.CosignAttach(t, reg, repo, d1, d1, other.Signer)
	const name = "app"
	ociNew(t, ns, name, reg.URL(repo), func(o *sourcev1.OCIRepository) {
		o.Spec.Reference = &sourcev1.OCIRepositoryRef{Tag: "app"}
		o.Spec.Verify = &sourcev1.OCIRepositoryVerification{Provider: "cosign", SecretRef: &meta.LocalObjectReference{Name: "cosign-keys"}}
	})

	var prev *meta.Artifact
	t.Run("any key of the secret verifies", func(t *testing.T) {
		o := ociReadyAt(t, ns, name, "app@"+d1)
		ociVerified(t, o, "app@"+d1)
		if files := untar(t, download(t, o.Status.Artifact)); files["app.yaml"] != "v: 1" {
			t.Errorf("artifact files %v", files)
		}
		prev = o.Status.Artifact.DeepCopy()
	})
	if prev == nil {
		t.FailNow()
	}

	trustedOnly := func(o *sourcev1.OCIRepository) {
		o.Spec.Verify.SecretRef = &meta.LocalObjectReference{Name: "trusted-only"}
	}
	kept := func(t *testing.T, o *sourcev1.OCIRepository) {
		t.Helper()
		if o.Status.Artifact == nil || o.Status.Artifact.Digest != prev.Digest || o.Status.Artifact.Revision != prev.Revision {
			t.Fatalf("previous artifact not kept: %+v", o.Status.Artifact)
		}
		if n := len(ociStored(t, ns, name)); n != 1 {
			t.Errorf("store holds %d artifacts, want the previous one only", n)
		}
		download(t, o.Status.Artifact)
	}
	d1ref := ocisign.DigestRef(t, reg, repo, d1).String()
	t.Run("signature by another key", func(t *testing.T) {
		// A spec change verifies the stored revision again.
		o := ociGet(t, ns, name)
		updateSpec(t, o, trustedOnly)
		o = ociVerifyFailed(t, ns, name, "failed to verify the signature using provider 'cosign': no matching signatures were found for '"+d1ref+"'")
		kept(t, o)
		if conditions.IsTrue(o, meta.StalledCondition) || !conditions.IsTrue(o, meta.ReconcilingCondition) {
			t.Errorf("a failed verification is retried, not stalled: %v", o.Status.Conditions)
		}
		evs := eventSink.await(t, ns, name, sourcev1.VerificationError, 10*time.Second)
		if ev := evs[len(evs)-1]; ev.Severity != "error" || !strings.Contains(ev.Message, "no matching signatures were found") {
			t.Errorf("event %+v", ev)
		}
	})

	for _, tc := range []struct {
		name, detail string
		push         func() string
	}{
		{"unsigned artifact", "no signatures found", func() string {
			return reg.PushFiles(t, repo, "app", map[string]string{"app.yaml": "v: unsigned"}).String()
		}},
		{"signature of another manifest", "invalid or missing digest in claim", func() string {
			d := reg.PushFiles(t, repo, "app", map[string]string{"app.yaml": "v: tampered"}).String()
			// Signed by the trusted key, but for d1: cosign checks the
			// payload names the manifest it is attached to.
			ocisign.CosignAttach(t, reg, repo, d, d1, trusted.Signer)
			return d
		}},
		{"another key, new revision", "invalid signature when validating ASN.1 encoded signature", func() string {
			d := reg.PushFiles(t, repo, "app", map[string]string{"app.yaml": "v: other"}).String()
			ocisign.CosignAttach(t, reg, repo, d, d, other.Signer)
			return d
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := tc.push()
			ociRequestReconcile(t, ns, name)
			dref := ocisign.DigestRef(t, reg, repo, d).String()
			// The detail tells the cases apart, and a retry that saw d
			// before its signature ("no signatures found") from them.
			kept(t, ociVerifyFailed(t, ns, name, "no matching signatures were found for '"+dref+"'", tc.detail))
		})
	}

	t.Run("no keys in the secret", func(t *testing.T) {
		updateSpec(t, ociGet(t, ns, name), func(o *sourcev1.OCIRepository) {
			o.Spec.Verify.SecretRef = &meta.LocalObjectReference{Name: "no-keys"}
		})
		kept(t, ociVerifyFailed(t, ns, name, "no public keys found in secret '"+ns+"/no-keys'"))
	})

	t.Run("trusted signature recovers", func(t *testing.T) {
		d := reg.PushFiles(t, repo, "app", map[string]string{"app.yaml": "v: 2"}).String()
		ocisign.CosignAttach(t, reg, repo, d, d, trusted.Signer)
		updateSpec(t, ociGet(t, ns, name), trustedOnly)
		o := ociReadyAt(t, ns, name, "app@"+d)
		ociVerified(t, o, "app@"+d)
		if files := untar(t, download(t, o.Status.Artifact)); files["app.yaml"] != "v: 2" {
			t.Errorf("artifact files %v", files)
		}
	})

	t.Run("a verified revision is not verified again", func(t *testing.T) {
		// Without the key secret a verification would fail: the same
		// revision and generation do not verify again.
		if err := env.Client.Delete(context.Background(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "trusted-only"}}); err != nil {
			t.Fatal(err)
		}
		at := ociRequestReconcile(t, ns, name)
		o := ociWaitFor(t, ns, name, 30*time.Second, "the requested reconcile", func(o *sourcev1.OCIRepository) bool {
			return o.Status.GetLastHandledReconcileRequest() == at
		})
		if !conditions.IsReady(o) || !conditions.IsTrue(o, sourcev1.SourceVerifiedCondition) {
			t.Fatalf("verified again: %v", o.Status.Conditions)
		}
		// A spec change does verify again, and fails without the secret.
		updateSpec(t, o, func(o *sourcev1.OCIRepository) { o.Spec.Timeout = &metav1.Duration{Duration: 30 * time.Second} })
		ociVerifyFailed(t, ns, name, "failed to get secret '"+ns+"/trusted-only'")
	})

	t.Run("verify unset removes SourceVerified", func(t *testing.T) {
		updateSpec(t, ociGet(t, ns, name), func(o *sourcev1.OCIRepository) { o.Spec.Verify = nil })
		o := ociReadyAt(t, ns, name, "")
		if conditions.Has(o, sourcev1.SourceVerifiedCondition) {
			t.Errorf("SourceVerified left without spec.verify: %v", o.Status.Conditions)
		}
	})
}

// TestOCIVerifyNotation verifies OCIRepository artifacts signed with
// notation: a trust policy and CA of the secret that match the signature
// verify it; a CA that did not issue the signing certificate, or a
// trusted identity it does not have, fail with VerificationError and
// keep the previous artifact.
func TestOCIVerifyNotation(t *testing.T) {
	ns := newNamespace(t)
	reg := ociregistry.Shared(t).Open
	repo := "verify-notation/" + ns
	signer, other := ocisign.NewNotationPKI(t, "signer"), ocisign.NewNotationPKI(t, "other")
	policy := func(identity string) string {
		return fmt.Sprintf(`{"version":"1.0","trustPolicies":[{"name":"flux","registryScopes":["*"],
			"signatureVerification":{"level":"strict"},"trustStores":["ca:flux"],"trustedIdentities":[%q]}]}`, identity)
	}
	newHelmSecret(t, ns, "good", map[string]string{"trustpolicy.json": policy("x509.subject: " + signer.Subject), "ca.pem": string(signer.CA)})
	newHelmSecret(t, ns, "wrong-ca", map[string]string{"trustpolicy.json": policy("*"), "ca.crt": string(other.CA)})
	newHelmSecret(t, ns, "other-identity", map[string]string{"trustpolicy.json": policy("x509.subject: " + other.Subject), "ca.pem": string(signer.CA)})
	newHelmSecret(t, ns, "no-policy", map[string]string{"ca.pem": string(signer.CA)})

	d := reg.PushFiles(t, repo, "app", map[string]string{"app.yaml": "v: 1"}).String()
	ocisign.NotationSign(t, reg, repo, d, signer)
	const name = "app"
	ociNew(t, ns, name, reg.URL(repo), func(o *sourcev1.OCIRepository) {
		o.Spec.Reference = &sourcev1.OCIRepositoryRef{Tag: "app"}
		o.Spec.Verify = &sourcev1.OCIRepositoryVerification{Provider: "notation", SecretRef: &meta.LocalObjectReference{Name: "good"}}
	})
	o := ociReadyAt(t, ns, name, "app@"+d)
	ociVerified(t, o, "app@"+d)
	prev := o.Status.Artifact.DeepCopy()

	for _, tc := range []struct{ secret, msg string }{
		{"wrong-ca", "failed to verify the signature using provider 'notation': signature verification failed"},
		{"other-identity", "failed to verify the signature using provider 'notation': signature verification failed"},
		{"no-policy", "'trustpolicy.json' not found in secret '" + ns + "/no-policy'"},
	} {
		t.Run(tc.secret, func(t *testing.T) {
			updateSpec(t, ociGet(t, ns, name), func(o *sourcev1.OCIRepository) {
				o.Spec.Verify.SecretRef = &meta.LocalObjectReference{Name: tc.secret}
			})
			o := ociVerifyFailed(t, ns, name, tc.msg)
			if o.Status.Artifact == nil || o.Status.Artifact.Digest != prev.Digest {
				t.Fatalf("previous artifact not kept: %+v", o.Status.Artifact)
			}
		})
	}

	t.Run("unsigned", func(t *testing.T) {
		d2 := reg.PushFiles(t, repo, "app", map[string]string{"app.yaml": "v: 2"}).String()
		updateSpec(t, ociGet(t, ns, name), func(o *sourcev1.OCIRepository) {
			o.Spec.Verify.SecretRef = &meta.LocalObjectReference{Name: "good"}
		})
		ociVerifyFailed(t, ns, name, "no signature is associated with \""+ocisign.DigestRef(t, reg, repo, d2).String())
	})
}

// TestHelmChartOCIVerify verifies charts of an oci HelmRepository signed
// with cosign, as Flux does: at every reconcile; a chart without a
// trusted signature fails the build (BuildFailed=ChartVerificationError)
// and SourceVerified, keeping the previous chart.
func TestHelmChartOCIVerify(t *testing.T) {
	ns := helmNamespace(t)
	reg := ociregistry.Shared(t).Open
	repo := "helmverify/" + ns
	trusted, other := ocisign.NewCosignKey(t), ocisign.NewCosignKey(t)
	newHelmSecret(t, ns, "cosign", map[string]string{"cosign.pub": string(trusted.Public)})
	digests := map[string]string{}
	for _, v := range []string{"1.0.0", "1.1.0", "1.2.0"} {
		digests[v] = reg.PushChart(t, repo+"/app", v, helmserver.Package(t, helmserver.ChartSpec{Name: "app", Version: v}))
	}
	ocisign.CosignAttach(t, reg, repo+"/app", digests["1.0.0"], digests["1.0.0"], trusted.Signer)
	ocisign.CosignAttach(t, reg, repo+"/app", digests["1.1.0"], digests["1.1.0"], other.Signer)
	helmOCIRepository(t, ns, "repo", reg.URL(repo), nil)
	hc := newHelmChart(t, ns, "app", sourcev1.HelmRepositoryKind, "repo", "app", func(o *sourcev1.HelmChart) {
		o.Spec.Version = "1.0.0"
		o.Spec.Verify = &sourcev1.HelmChartVerification{Provider: "cosign", SecretRef: &meta.LocalObjectReference{Name: "cosign"}}
	})

	o := helmReady(t, hc, "1.0.0")
	helmCheckChartArtifact(t, o, "app", "1.0.0")
	if c := conditions.Get(o, sourcev1.SourceVerifiedCondition); c == nil || c.Status != metav1.ConditionTrue ||
		c.Reason != meta.SucceededReason || c.Message != "verified signature of version 1.0.0" {
		t.Fatalf("SourceVerified %+v", c)
	}
	prev := o.Status.Artifact.DeepCopy()

	for _, version := range []string{"1.1.0", "1.2.0"} {
		t.Run("version "+version, func(t *testing.T) {
			updateSpec(t, hc, func(o *sourcev1.HelmChart) { o.Spec.Version = version })
			ref := ocisign.DigestRef(t, reg, repo+"/app", digests[version]).String()
			msg := "chart verification error: failed to verify " + reg.URL(repo) + "/app:" + version +
				": no matching signatures were found for '" + ref + "'"
			o := helmWaitFor(t, hc, 20*time.Second, "SourceVerified=False", func(o *sourcev1.HelmChart) bool {
				c := conditions.Get(o, sourcev1.SourceVerifiedCondition)
				return c != nil && c.Status == metav1.ConditionFalse && c.Reason == sourcev1.VerificationError &&
					strings.HasPrefix(c.Message, msg) &&
					conditions.IsTrue(o, sourcev1.BuildFailedCondition) && conditions.GetReason(o, sourcev1.BuildFailedCondition) == "ChartVerificationError" &&
					conditions.IsFalse(o, meta.ReadyCondition) && conditions.GetReason(o, meta.ReadyCondition) == sourcev1.VerificationError
			})
			if o.Status.Artifact == nil || o.Status.Artifact.Digest != prev.Digest {
				t.Fatalf("previous chart not kept: %+v", o.Status.Artifact)
			}
		})
	}

	t.Run("verified at every reconcile", func(t *testing.T) {
		updateSpec(t, hc, func(o *sourcev1.HelmChart) { o.Spec.Version = "1.0.0" })
		o := helmReady(t, hc, "1.0.0")
		if !conditions.IsTrue(o, sourcev1.SourceVerifiedCondition) || o.Status.Artifact.Digest != prev.Digest {
			t.Fatalf("conditions %v, artifact %+v", o.Status.Conditions, o.Status.Artifact)
		}
		// The stored chart is up to date, but its signature is checked
		// again: without the key secret it fails.
		if err := env.Client.Delete(context.Background(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "cosign"}}); err != nil {
			t.Fatal(err)
		}
		helmRequestReconcile(t, hc)
		helmWaitFor(t, hc, 20*time.Second, "SourceVerified=False without the secret", func(o *sourcev1.HelmChart) bool {
			return conditions.IsFalse(o, sourcev1.SourceVerifiedCondition) &&
				strings.Contains(conditions.GetMessage(o, sourcev1.SourceVerifiedCondition), "failed to verify the signature using provider 'cosign': failed to get secret")
		})
	})

	t.Run("keyless without a trusted root stalls", func(t *testing.T) {
		updateSpec(t, hc, func(o *sourcev1.HelmChart) { o.Spec.Verify.SecretRef = nil })
		helmWaitFor(t, hc, 20*time.Second, "Stalled", func(o *sourcev1.HelmChart) bool {
			return conditions.IsFalse(o, sourcev1.SourceVerifiedCondition) && conditions.IsTrue(o, meta.StalledCondition) &&
				strings.Contains(conditions.GetMessage(o, sourcev1.SourceVerifiedCondition), "provider 'cosign keyless': keyless verification against the public Sigstore infrastructure is not supported")
		})
	})

	t.Run("verify unset removes SourceVerified", func(t *testing.T) {
		updateSpec(t, hc, func(o *sourcev1.HelmChart) { o.Spec.Verify = nil })
		o := helmReady(t, hc, "1.0.0")
		if conditions.Has(o, sourcev1.SourceVerifiedCondition) {
			t.Errorf("SourceVerified left without spec.verify: %v", o.Status.Conditions)
		}
	})
}

// TestOCIVerifyKeyless verifies keyless cosign signatures offline
// against the trusted root of spec.verify.trustedRootSecretRef (of a
// Sigstore the test runs: CA, CT log and Rekor log keys): a certificate
// of its CA for a matching identity, with its CT log's SCT and its Rekor
// log's bundle, verifies; a certificate of another CA, one without the
// SCT, or another identity fails with VerificationError and keeps the
// previous artifact; keyless without a trusted root stalls (it would
// need the public Sigstore infrastructure).
func TestOCIVerifyKeyless(t *testing.T) {
	ns := newNamespace(t)
	reg := ociregistry.Shared(t).Open
	repo := "verify-keyless/" + ns
	trusted, untrusted := ocisign.NewSigstore(t), ocisign.NewSigstore(t)
	newHelmSecret(t, ns, "root", map[string]string{"trusted_root.json": string(trusted.TrustedRoot(t))})
	newHelmSecret(t, ns, "no-root", map[string]string{"root.json": "{}"})
	const identity, issuer = "ci@example.com", "https://issuer.example"

	d := reg.PushFiles(t, repo, "app", map[string]string{"app.yaml": "v: 1"}).String()
	trusted.KeylessAttach(t, reg, repo, d, identity, issuer, nil, false)
	const name = "app"
	ociNew(t, ns, name, reg.URL(repo), func(o *sourcev1.OCIRepository) {
		o.Spec.Reference = &sourcev1.OCIRepositoryRef{Tag: "app"}
		o.Spec.Verify = &sourcev1.OCIRepositoryVerification{Provider: "cosign",
			MatchOIDCIdentity: []sourcev1.OIDCIdentityMatch{
				{Issuer: "^https://other\\.example$", Subject: ".*"},
				{Issuer: "^https://issuer\\.example$", Subject: "^ci@example\\.com$"},
			},
			TrustedRootSecretRef: &meta.LocalObjectReference{Name: "root"}}
	})
	o := ociReadyAt(t, ns, name, "app@"+d)
	ociVerified(t, o, "app@"+d)
	prev := o.Status.Artifact.DeepCopy()

	for _, tc := range []struct {
		name, detail string
		sign         func(d string)
	}{
		{"certificate of another CA", "leaf certificate verification failed", func(d string) {
			untrusted.KeylessAttach(t, reg, repo, d, identity, issuer, trusted, false)
		}},
		{"no embedded SCT", "SCT", func(d string) { trusted.KeylessAttach(t, reg, repo, d, identity, issuer, nil, true) }},
		{"another identity", "none of the expected identities matched", func(d string) {
			trusted.KeylessAttach(t, reg, repo, d, "mallory@example.com", issuer, nil, false)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := reg.PushFiles(t, repo, "app", map[string]string{"app.yaml": tc.name}).String()
			tc.sign(d)
			ociRequestReconcile(t, ns, name)
			// A retry of the previous failure may verify d before it is
			// signed ("no signatures found"): wait for the detail.
			o := ociVerifyFailed(t, ns, name, "failed to verify the signature using provider 'cosign keyless': no matching signatures were found for '"+
				ocisign.DigestRef(t, reg, repo, d).String()+"'", tc.detail)
			if o.Status.Artifact == nil || o.Status.Artifact.Digest != prev.Digest {
				t.Fatalf("previous artifact not kept: %+v", o.Status.Artifact)
			}
		})
	}
	t.Run("secret without trusted_root.json", func(t *testing.T) {
		updateSpec(t, ociGet(t, ns, name), func(o *sourcev1.OCIRepository) {
			o.Spec.Verify.TrustedRootSecretRef = &meta.LocalObjectReference{Name: "no-root"}
		})
		ociVerifyFailed(t, ns, name, "failed to read trusted root from secret '"+ns+"/no-root': 'trusted_root.json' not found in secret")
	})
	t.Run("no trusted root stalls", func(t *testing.T) {
		updateSpec(t, ociGet(t, ns, name), func(o *sourcev1.OCIRepository) { o.Spec.Verify.TrustedRootSecretRef = nil })
		o := ociVerifyFailed(t, ns, name, "keyless verification against the public Sigstore infrastructure is not supported")
		if !conditions.IsTrue(o, meta.StalledCondition) || conditions.GetReason(o, meta.StalledCondition) != sourcev1.VerificationError {
			t.Errorf("not stalled: %v", o.Status.Conditions)
		}
	})
}

// TestOCIVerifyRegistryAccess reads signatures with the pull's own
// registry access: the credentials of secretRef on a registry that
// requires them, and certSecretRef's CA on a TLS registry, for
// OCIRepository and for charts of an oci HelmRepository.
func TestOCIVerifyRegistryAccess(t *testing.T) {
	ns := newNamespace(t)
	regs := ociregistry.Shared(t)
	repo := "verify-access/" + ns
	key := ocisign.NewCosignKey(t)
	pki := ocisign.NewNotationPKI(t, "signer")
	newHelmSecret(t, ns, "cosign", map[string]string{"cosign.pub": string(key.Public)})
	newHelmSecret(t, ns, "notation", map[string]string{"ca.pem": string(pki.CA), "trustpolicy.json": `{"version":"1.0","trustPolicies":[{"name":"all",
		"registryScopes":["*"],"signatureVerification":{"level":"strict"},"trustStores":["ca:all"],"trustedIdentities":["*"]}]}`})
	ociDockerConfigSecret(t, ns, "docker", regs.Private.Host, ociregistry.User, ociregistry.Password)
	newHelmSecret(t, ns, "basic", map[string]string{"username": ociregistry.User, "password": ociregistry.Password})
	newHelmSecret(t, ns, "ca", map[string]string{"ca.crt": string(regs.TLSCA)})

	// Private: pushed and signed with the registry's credentials.
	priv := regs.Private.PushFiles(t, repo, "v1", map[string]string{"a.yaml": "private"}).String()
	ocisign.CosignAttach(t, regs.Private, repo, priv, priv, key.Signer)
	// TLS: the TLS front serves the open registry's storage.
	tlsDigest := regs.Open.PushFiles(t, repo+"/tls", "v1", map[string]string{"a.yaml": "tls"}).String()
	ocisign.NotationSign(t, regs.Open, repo+"/tls", tlsDigest, pki)
	chart := helmserver.Package(t, helmserver.ChartSpec{Name: "app", Version: "1.0.0"})
	privChart := regs.Private.PushChart(t, repo+"/charts/app", "1.0.0", chart)
	ocisign.CosignAttach(t, regs.Private, repo+"/charts/app", privChart, privChart, key.Signer)
	tlsChart := regs.Open.PushChart(t, repo+"/tlscharts/app", "1.0.0", chart)
	ocisign.CosignAttach(t, regs.Open, repo+"/tlscharts/app", tlsChart, tlsChart, key.Signer)

	ociNew(t, ns, "private", regs.Private.URL(repo), func(o *sourcev1.OCIRepository) {
		o.Spec.Reference = &sourcev1.OCIRepositoryRef{Tag: "v1"}
		o.Spec.SecretRef = &meta.LocalObjectReference{Name: "docker"}
		o.Spec.Verify = &sourcev1.OCIRepositoryVerification{Provider: "cosign", SecretRef: &meta.LocalObjectReference{Name: "cosign"}}
	})
	ociNew(t, ns, "tls", regs.TLS.URL(repo+"/tls"), func(o *sourcev1.OCIRepository) {
		o.Spec.Insecure = false
		o.Spec.Reference = &sourcev1.OCIRepositoryRef{Tag: "v1"}
		o.Spec.CertSecretRef = &meta.LocalObjectReference{Name: "ca"}
		o.Spec.Verify = &sourcev1.OCIRepositoryVerification{Provider: "notation", SecretRef: &meta.LocalObjectReference{Name: "notation"}}
	})
	ociVerified(t, ociReadyAt(t, ns, "private", "v1@"+priv), "v1@"+priv)
	ociVerified(t, ociReadyAt(t, ns, "tls", "v1@"+tlsDigest), "v1@"+tlsDigest)

	helmOCIRepository(t, ns, "private-charts", regs.Private.URL(repo+"/charts"), func(o *sourcev1.HelmRepository) {
		o.Spec.SecretRef = &meta.LocalObjectReference{Name: "basic"}
	})
	helmOCIRepository(t, ns, "tls-charts", regs.TLS.URL(repo+"/tlscharts"), func(o *sourcev1.HelmRepository) {
		o.Spec.Insecure = false
		o.Spec.CertSecretRef = &meta.LocalObjectReference{Name: "ca"}
	})
	for _, source := range []string{"private-charts", "tls-charts"} {
		hc := newHelmChart(t, ns, source, sourcev1.HelmRepositoryKind, source, "app", func(o *sourcev1.HelmChart) {
			o.Spec.Version = "1.0.0"
			o.Spec.Verify = &sourcev1.HelmChartVerification{Provider: "cosign", SecretRef: &meta.LocalObjectReference{Name: "cosign"}}
		})
		o := helmReady(t, hc, "1.0.0")
		if c := conditions.Get(o, sourcev1.SourceVerifiedCondition); c == nil || c.Status != metav1.ConditionTrue {
			t.Errorf("%s: SourceVerified %+v", source, c)
		}
	}
}

// TestHelmChartOCIVerifyHTTPRepository: as in Flux, charts of an
// http/https HelmRepository cannot be verified, and asking for it fails
// the build (BuildFailed=ChartVerificationError, SourceVerified=False)
// rather than storing an unverified chart.
func TestHelmChartOCIVerifyHTTPRepository(t *testing.T) {
	ns := helmNamespace(t)
	srv := helmserver.Start(t, false)
	srv.Publish(helmserver.ChartSpec{Name: "app", Version: "1.0.0"})
	helmReady(t, newHelmRepository(t, ns, "repo", srv.URL(), nil), "")
	hc := newHelmChart(t, ns, "app", sourcev1.HelmRepositoryKind, "repo", "app", func(o *sourcev1.HelmChart) {
		o.Spec.Verify = &sourcev1.HelmChartVerification{Provider: "cosign", SecretRef: &meta.LocalObjectReference{Name: "absent"}}
	})
	o := helmWaitFor(t, hc, 20*time.Second, "BuildFailed=ChartVerificationError", func(o *sourcev1.HelmChart) bool {
		return conditions.IsTrue(o, sourcev1.BuildFailedCondition) && conditions.GetReason(o, sourcev1.BuildFailedCondition) == "ChartVerificationError" &&
			conditions.GetMessage(o, sourcev1.BuildFailedCondition) == "chart verification error: not implemented" &&
			conditions.IsFalse(o, sourcev1.SourceVerifiedCondition) && conditions.GetReason(o, sourcev1.SourceVerifiedCondition) == sourcev1.VerificationError &&
			conditions.GetReason(o, meta.ReadyCondition) == sourcev1.VerificationError
	})
	if o.Status.Artifact != nil || len(storedOf[*sourcev1.HelmChart](t, ns, "app")) != 0 {
		t.Fatalf("an unverified chart was stored: %+v", o.Status.Artifact)
	}
}
