package verify

import (
	"context"
	"crypto"
	"errors"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/sigstore/cosign/v2/pkg/cosign"
	"github.com/sigstore/cosign/v2/pkg/oci"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
)

// Identity is one spec.verify.matchOIDCIdentity entry: regular
// expressions the OIDC issuer and subject of a keyless signing
// certificate must match.
type Identity struct {
	Issuer  string
	Subject string
}

// cosignVerifier verifies cosign signatures: those under the legacy
// sha256-<hex>.sig tag and, when the artifact has them, Sigstore bundles
// attached as OCI referrers (what cosign v3 writes by default).
type cosignVerifier struct {
	reg Registry
	// keys are the public keys of key-based verification; any one
	// verifying a signature is enough.
	keys []signature.Verifier
	// trusted and identities are keyless verification's.
	trusted    root.TrustedMaterial
	identities []cosign.Identity
}

// NewCosignKeys verifies with the PEM public keys pubKeys (the .pub keys
// of spec.verify.secretRef): an artifact is verified when a signature of
// it verifies with any of them. As Flux does with keys, the transparency
// log is not consulted, so nothing but the registry is contacted.
func NewCosignKeys(pubKeys [][]byte, reg Registry) (Verifier, error) {
	if len(pubKeys) == 0 {
		return nil, errors.New("no public keys")
	}
	v := &cosignVerifier{reg: reg}
	for i, data := range pubKeys {
		pub, err := cryptoutils.UnmarshalPEMToPublicKey(data)
		if err != nil {
			return nil, fmt.Errorf("public key %d: %w", i+1, err)
		}
		sv, err := signature.LoadVerifier(pub, crypto.SHA256)
		if err != nil {
			return nil, fmt.Errorf("public key %d: %w", i+1, err)
		}
		v.keys = append(v.keys, sv)
	}
	return v, nil
}

// NewCosignKeyless verifies keyless signatures against the Sigstore
// trusted root trustedRootJSON (spec.verify.trustedRootSecretRef): the
// signing certificate must chain to one of its certificate authorities
// and carry an embedded SCT of one of its CT logs, the signature's Rekor
// bundle must be signed by one of its transparency logs, and the
// certificate's issuer and subject must match one of identities (none:
// any identity). Verification is offline: the root and the bundle
// embedded in the signature carry everything, Rekor and Fulcio are not
// contacted.
func NewCosignKeyless(trustedRootJSON []byte, identities []Identity, reg Registry) (Verifier, error) {
	tr, err := root.NewTrustedRootFromJSON(trustedRootJSON)
	if err != nil {
		return nil, fmt.Errorf("unable to parse trusted root: %w", err)
	}
	v := &cosignVerifier{reg: reg, trusted: tr}
	for _, id := range identities {
		v.identities = append(v.identities, cosign.Identity{IssuerRegExp: id.Issuer, SubjectRegExp: id.Subject})
	}
	return v, nil
}

// Verify reports Verified when a signature of ref verifies, and fails
// with Flux's "no matching signatures" otherwise; the reasons of the
// individual failures are appended after it.
func (v *cosignVerifier) Verify(ctx context.Context, ref name.Digest) (Result, error) {
	base := cosign.CheckOpts{
		// As the cosign CLI checks, and Flux's verifier does not: the
		// signed payload must name the manifest the signature is
		// attached to, or a signature of one manifest could be copied
		// to another.
		ClaimVerifier: cosign.SimpleClaimVerifier,
		RegistryClientOpts: []ociremote.Option{
			ociremote.WithRemoteOptions(v.reg.remoteOptions(ctx)...),
			ociremote.WithNameOptions(v.reg.nameOptions()...),
		},
	}
	var candidates []cosign.CheckOpts
	if v.trusted != nil {
		co := base
		co.TrustedMaterial = v.trusted
		co.Identities = v.identities
		co.Offline = true
		candidates = append(candidates, co)
	}
	for _, sv := range v.keys {
		co := base
		co.SigVerifier = sv
		co.IgnoreTlog = true
		co.Offline = true
		candidates = append(candidates, co)
	}
	var errs []error
	for _, co := range candidates {
		err := verifyCosign(ctx, ref, &co)
		if err == nil {
			return Verified, nil
		}
		errs = append(errs, err)
	}
	return 0, fmt.Errorf("no matching signatures were found for '%s': %w", ref, errors.Join(errs...))
}

// verifyCosign verifies the Sigstore bundles of ref when there are any,
// else its legacy signatures, as the cosign CLI decides.
func verifyCosign(ctx context.Context, ref name.Digest, co *cosign.CheckOpts) error {
	var (
		sigs []oci.Signature
		err  error
	)
	if bundles, _, berr := cosign.GetBundles(ctx, ref, co); berr == nil && len(bundles) > 0 {
		co.NewBundleFormat = true
		if co.TrustedMaterial == nil {
			// Bundle verification wants trusted material even when the
			// key is all that is trusted: none beyond the key.
			co.TrustedMaterial = &root.BaseTrustedMaterial{}
		}
		sigs, _, err = cosign.VerifyImageAttestations(ctx, ref, co)
	} else {
		sigs, _, err = cosign.VerifyImageSignatures(ctx, ref, co)
	}
	if err != nil {
		return err
	}
	if len(sigs) == 0 {
		return errors.New("no verified signature")
	}
	return nil
}
