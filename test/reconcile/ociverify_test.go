package reconcile

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sourceraft/sourceraft/internal/ociregistry"
	"github.com/sourceraft/sourceraft/internal/ocisign"
)

// verifySecretOf creates a Secret of data for spec.verify.
func verifySecretOf(t *testing.T, ns, name string, data map[string][]byte) *corev1.Secret {
	t.Helper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: data}
	if err := env.Client.Create(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	return s
}

// ociVerifyFailed waits for a failed verification as Flux reports it:
// SourceVerified=False with reason VerificationError and a message that
// contains msg, and Ready=False with the same reason and message.
func ociVerifyFailed(t *testing.T, ns, name, msg string) *sourcev1.OCIRepository {
	t.Helper()
	return ociWaitFor(t, ns, name, 20*time.Second, "SourceVerified=False with '"+msg+"'", func(o *sourcev1.OCIRepository) bool {
		c := conditions.Get(o, sourcev1.SourceVerifiedCondition)
		return c != nil && c.Status == metav1.ConditionFalse && c.Reason == sourcev1.VerificationError &&
			strings.Contains(c.Message, msg) &&
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
	verifySecretOf(t, ns, "cosign-keys", map[string][]byte{
		"other.pub": other.Public, "trusted.pub": trusted.Public, "readme.txt": []byte("not a key"),
	})
	verifySecretOf(t, ns, "trusted-only", map[string][]byte{"cosign.pub": trusted.Public})
	verifySecretOf(t, ns, "no-keys", map[string][]byte{"readme.txt": []byte("not a key")})

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
		name string
		push func() string
	}{
		{"unsigned artifact", func() string {
			return reg.PushFiles(t, repo, "app", map[string]string{"app.yaml": "v: unsigned"}).String()
		}},
		{"signature of another manifest", func() string {
			d := reg.PushFiles(t, repo, "app", map[string]string{"app.yaml": "v: tampered"}).String()
			// Signed by the trusted key, but for d1: cosign checks the
			// payload names the manifest it is attached to.
			ocisign.CosignAttach(t, reg, repo, d, d1, trusted.Signer)
			return d
		}},
		{"another key, new revision", func() string {
			d := reg.PushFiles(t, repo, "app", map[string]string{"app.yaml": "v: other"}).String()
			ocisign.CosignAttach(t, reg, repo, d, d, other.Signer)
			return d
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := tc.push()
			ociRequestReconcile(t, ns, name)
			dref := ocisign.DigestRef(t, reg, repo, d).String()
			kept(t, ociVerifyFailed(t, ns, name, "no matching signatures were found for '"+dref+"'"))
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
		o := ociGet(t, ns, name)
		at := ociRequestReconcile(t, ns, name)
		o = ociWaitFor(t, ns, name, 30*time.Second, "the requested reconcile", func(o *sourcev1.OCIRepository) bool {
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
