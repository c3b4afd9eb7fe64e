package verify_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/sourceraft/sourceraft/internal/ociregistry"
	"github.com/sourceraft/sourceraft/internal/ocisign"
	"github.com/sourceraft/sourceraft/sources/oci/verify"
)

// openRegistry is how the verifiers reach the tests' open registry.
var openRegistry = verify.Registry{PlainHTTP: true}

// push pushes a new artifact under repo:tag and returns its digest.
func push(t *testing.T, reg *ociregistry.Registry, repo, tag, content string) string {
	t.Helper()
	return reg.PushFiles(t, repo, tag, map[string]string{"a.yaml": content}).String()
}

// check runs v on digest of repo and compares the outcome: a Result, or
// an error containing wantErr.
func check(t *testing.T, v verify.Verifier, reg *ociregistry.Registry, repo, digest string, want verify.Result, wantErr string) {
	t.Helper()
	got, err := v.Verify(t.Context(), ocisign.DigestRef(t, reg, repo, digest))
	switch {
	case wantErr == "" && err != nil:
		t.Fatalf("Verify: %v", err)
	case wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)):
		t.Fatalf("Verify = %v, %v; want an error with %q", got, err, wantErr)
	case wantErr == "" && got != want:
		t.Fatalf("Verify = %v, want %v", got, want)
	}
}

func TestCosignKeys(t *testing.T) {
	reg := ociregistry.Shared(t).Open
	repo := "verify/cosign-keys"
	trusted, other := ocisign.NewCosignKey(t), ocisign.NewCosignKey(t)
	v, err := verify.NewCosignKeys([][]byte{other.Public, trusted.Public}, openRegistry)
	if err != nil {
		t.Fatal(err)
	}
	onlyTrusted, err := verify.NewCosignKeys([][]byte{trusted.Public}, openRegistry)
	if err != nil {
		t.Fatal(err)
	}

	good := push(t, reg, repo, "good", "good")
	ocisign.CosignAttach(t, reg, repo, good, good, trusted.Signer)
	check(t, v, reg, repo, good, verify.Verified, "")
	check(t, onlyTrusted, reg, repo, good, verify.Verified, "")

	byOther := push(t, reg, repo, "other", "other")
	ocisign.CosignAttach(t, reg, repo, byOther, byOther, other.Signer)
	check(t, v, reg, repo, byOther, verify.Verified, "")
	check(t, onlyTrusted, reg, repo, byOther, 0, "no matching signatures were found for '"+ocisign.DigestRef(t, reg, repo, byOther).String()+"'")

	unsigned := push(t, reg, repo, "unsigned", "unsigned")
	check(t, v, reg, repo, unsigned, 0, "no matching signatures")

	// The trusted key signed good; its signature copied to moved does
	// not verify moved.
	moved := push(t, reg, repo, "moved", "moved")
	ocisign.CosignAttach(t, reg, repo, moved, good, trusted.Signer)
	check(t, v, reg, repo, moved, 0, "no matching signatures")

	if _, err := verify.NewCosignKeys([][]byte{[]byte("not a key")}, openRegistry); err == nil {
		t.Error("NewCosignKeys accepted a key that is not PEM")
	}
	if _, err := verify.NewCosignKeys(nil, openRegistry); err == nil {
		t.Error("NewCosignKeys accepted no keys")
	}
}

func TestCosignKeyless(t *testing.T) {
	reg := ociregistry.Shared(t).Open
	repo := "verify/cosign-keyless"
	trusted, untrusted := ocisign.NewSigstore(t), ocisign.NewSigstore(t)
	v, err := verify.NewCosignKeyless(trusted.TrustedRoot(t), []verify.Identity{{Issuer: "^https://issuer\\.example$", Subject: "^ci@example\\.com$"}}, openRegistry)
	if err != nil {
		t.Fatal(err)
	}

	// A certificate of the trusted CA for a matching identity, with the
	// SCT of the root's CT log and the bundle of its Rekor log.
	good := push(t, reg, repo, "good", "good")
	trusted.KeylessAttach(t, reg, repo, good, "ci@example.com", "https://issuer.example", nil, false)
	check(t, v, reg, repo, good, verify.Verified, "")
	anyIdentity, err := verify.NewCosignKeyless(trusted.TrustedRoot(t), nil, openRegistry)
	if err != nil {
		t.Fatal(err)
	}
	check(t, anyIdentity, reg, repo, good, verify.Verified, "")

	otherIdentity := push(t, reg, repo, "other-identity", "other identity")
	trusted.KeylessAttach(t, reg, repo, otherIdentity, "someone@example.com", "https://issuer.example", nil, false)
	check(t, v, reg, repo, otherIdentity, 0, "none of the expected identities matched")

	// Verification is offline: a signature without a Rekor bundle is
	// refused rather than looked up.
	unsigned := push(t, reg, repo, "unsigned", "unsigned")
	check(t, v, reg, repo, unsigned, 0, "no matching signatures")

	// A bundle of a transparency log the root does not trust.
	otherLog := push(t, reg, repo, "other-log", "other log")
	trusted.KeylessAttach(t, reg, repo, otherLog, "ci@example.com", "https://issuer.example", untrusted, false)
	check(t, v, reg, repo, otherLog, 0, "rekor log public key not found")

	// A certificate of another CA, logged by the trusted log: it does
	// not chain to the trusted root.
	otherCA := push(t, reg, repo, "other-ca", "other ca")
	untrusted.KeylessAttach(t, reg, repo, otherCA, "ci@example.com", "https://issuer.example", trusted, false)
	check(t, v, reg, repo, otherCA, 0, "leaf certificate verification failed")

	// A certificate of the trusted CA is refused without the embedded
	// SCT of one of the root's CT logs.
	noSCT := push(t, reg, repo, "no-sct", "no sct")
	trusted.KeylessAttach(t, reg, repo, noSCT, "ci@example.com", "https://issuer.example", nil, true)
	check(t, v, reg, repo, noSCT, 0, "SCT")

	if _, err := verify.NewCosignKeyless([]byte(`{"mediaType":"nope"}`), nil, openRegistry); err == nil {
		t.Error("NewCosignKeyless accepted an invalid trusted root")
	}
}

func TestNotation(t *testing.T) {
	reg := ociregistry.Shared(t).Open
	repo := "verify/notation"
	signerPKI, otherPKI := ocisign.NewNotationPKI(t, "signer"), ocisign.NewNotationPKI(t, "other")
	policy := func(level, identity string) []byte {
		return fmt.Appendf(nil, `{"version":"1.0","trustPolicies":[{"name":"test","registryScopes":["*"],
			"signatureVerification":{"level":%q},"trustStores":["ca:test"],"trustedIdentities":[%q]}]}`, level, identity)
	}
	newV := func(policyJSON []byte, ca []byte) verify.Verifier {
		t.Helper()
		v, err := verify.NewNotation(policyJSON, [][]byte{ca}, openRegistry)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}

	signed := push(t, reg, repo, "signed", "signed")
	ocisign.NotationSign(t, reg, repo, signed, signerPKI)
	unsigned := push(t, reg, repo, "unsigned", "unsigned")

	check(t, newV(policy("strict", "*"), signerPKI.CA), reg, repo, signed, verify.Verified, "")
	check(t, newV(policy("strict", "x509.subject: "+signerPKI.Subject), signerPKI.CA), reg, repo, signed, verify.Verified, "")
	check(t, newV(policy("strict", "*"), otherPKI.CA), reg, repo, signed, 0, "signature verification failed")
	check(t, newV(policy("strict", "x509.subject: "+otherPKI.Subject), signerPKI.CA), reg, repo, signed, 0, "signature verification failed")
	check(t, newV(policy("strict", "*"), signerPKI.CA), reg, repo, unsigned, 0, "no signature is associated")
	// audit logs an authenticity failure instead of enforcing it: Flux
	// neither verifies nor fails the artifact.
	check(t, newV(policy("audit", "*"), otherPKI.CA), reg, repo, signed, verify.Ignored, "")

	if _, err := verify.NewNotation([]byte("{"), [][]byte{signerPKI.CA}, openRegistry); err == nil {
		t.Error("NewNotation accepted a trust policy that is not JSON")
	}
	if _, err := verify.NewNotation(policy("strict", "*"), nil, openRegistry); err == nil {
		t.Error("NewNotation accepted no certificates")
	}
}
