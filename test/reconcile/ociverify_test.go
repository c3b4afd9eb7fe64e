package reconcile

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/mutate"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/payload"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sourceraft/sourceraft/internal/ociregistry"
)

// cosignKey is a signing key of the tests and its PEM public key, the
// form `cosign generate-key-pair` writes cosign.pub in.
type cosignKey struct {
	signer signature.Signer
	pub    []byte
}

func newCosignKey(t *testing.T) cosignKey {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := signature.LoadECDSASignerVerifier(priv, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := cryptoutils.MarshalPublicKeyToPEM(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	return cosignKey{signer: signer, pub: pub}
}

// cosignDigestRef is the reference of digest in repo of reg.
func cosignDigestRef(t *testing.T, reg *ociregistry.Registry, repo string, digest string) name.Digest {
	t.Helper()
	ref, err := name.NewDigest(reg.Host+"/"+repo+"@"+digest, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// cosignAttach signs, as `cosign sign --key` does, a simple-signing
// payload that claims the manifest claimed, and attaches the signature
// to the manifest signed (its sha256-<hex>.sig tag). A valid signature
// claims what it is attached to; claimed != signed is a signature moved
// to another manifest.
func cosignAttach(t *testing.T, reg *ociregistry.Registry, repo string, signed, claimed string, key cosignKey, opts ...static.Option) {
	t.Helper()
	claimedRef := cosignDigestRef(t, reg, repo, claimed)
	pl, err := (&payload.Cosign{Image: claimedRef}).MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	sig, err := key.signer.SignMessage(bytes.NewReader(pl))
	if err != nil {
		t.Fatal(err)
	}
	ociSig, err := static.NewSignature(pl, base64.StdEncoding.EncodeToString(sig), opts...)
	if err != nil {
		t.Fatal(err)
	}
	signedRef := cosignDigestRef(t, reg, repo, signed)
	ro := ociremote.WithRemoteOptions(remote.WithAuth(reg.Auth))
	se, err := ociremote.SignedEntity(signedRef, ro)
	if err != nil {
		t.Fatal(err)
	}
	withSig, err := mutate.AttachSignatureToEntity(se, ociSig)
	if err != nil {
		t.Fatal(err)
	}
	if err := ociremote.WriteSignatures(signedRef.Repository, withSig, ro); err != nil {
		t.Fatalf("push signature of %s: %v", signedRef, err)
	}
}

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
	return ociWaitFor(t, ns, name, 60*time.Second, "SourceVerified=False with '"+msg+"'", func(o *sourcev1.OCIRepository) bool {
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
	trusted, other := newCosignKey(t), newCosignKey(t)
	verifySecretOf(t, ns, "cosign-keys", map[string][]byte{
		"other.pub": other.pub, "trusted.pub": trusted.pub, "readme.txt": []byte("not a key"),
	})
	verifySecretOf(t, ns, "trusted-only", map[string][]byte{"cosign.pub": trusted.pub})
	verifySecretOf(t, ns, "no-keys", map[string][]byte{"readme.txt": []byte("not a key")})

	d1 := reg.PushFiles(t, repo, "app", map[string]string{"app.yaml": "v: 1"}).String()
	cosignAttach(t, reg, repo, d1, d1, other)
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
	d1ref := cosignDigestRef(t, reg, repo, d1).String()
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
			cosignAttach(t, reg, repo, d, d1, trusted)
			return d
		}},
		{"another key, new revision", func() string {
			d := reg.PushFiles(t, repo, "app", map[string]string{"app.yaml": "v: other"}).String()
			cosignAttach(t, reg, repo, d, d, other)
			return d
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := tc.push()
			ociRequestReconcile(t, ns, name)
			dref := cosignDigestRef(t, reg, repo, d).String()
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
		cosignAttach(t, reg, repo, d, d, trusted)
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
