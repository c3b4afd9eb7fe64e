package verify

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	_ "github.com/notaryproject/notation-core-go/signature/cose" // registers the COSE envelope format
	_ "github.com/notaryproject/notation-core-go/signature/jws"  // registers the JWS envelope format
	"github.com/notaryproject/notation-go"
	"github.com/notaryproject/notation-go/registry"
	nverifier "github.com/notaryproject/notation-go/verifier"
	"github.com/notaryproject/notation-go/verifier/trustpolicy"
	"github.com/notaryproject/notation-go/verifier/truststore"
	orasremote "oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
)

// TrustPolicyKey is the spec.verify.secretRef key of notation's trust
// policy.
const TrustPolicyKey = "trustpolicy.json"

// notationMaxSignatures bounds the signatures tried per artifact, as
// Flux bounds them.
const notationMaxSignatures = 3

// notationVerifier verifies notation signatures attached as OCI
// referrers.
type notationVerifier struct {
	reg      Registry
	verifier notation.Verifier
}

// NewNotation verifies against trustPolicyJSON (notation's trust policy
// document) with certs (PEM or DER CA certificates, the .pem and .crt
// keys of spec.verify.secretRef) as every trust store the policy names.
// A statement of verification level 'skip' ignores its trust stores and
// identities, as Flux cleans it.
func NewNotation(trustPolicyJSON []byte, certs [][]byte, reg Registry) (Verifier, error) {
	var doc trustpolicy.Document
	if err := json.Unmarshal(trustPolicyJSON, &doc); err != nil {
		return nil, fmt.Errorf("error occurred while parsing %s: %w", TrustPolicyKey, err)
	}
	for i := range doc.TrustPolicies {
		if doc.TrustPolicies[i].SignatureVerification.VerificationLevel == trustpolicy.LevelSkip.Name {
			doc.TrustPolicies[i].TrustStores = []string{}
			doc.TrustPolicies[i].TrustedIdentities = []string{}
		}
	}
	store, err := newCertStore(certs)
	if err != nil {
		return nil, err
	}
	v, err := nverifier.New(&doc, store, nil)
	if err != nil {
		return nil, err
	}
	return &notationVerifier{reg: reg, verifier: v}, nil
}

// certStore answers every trust store with the same certificates.
type certStore []*x509.Certificate

func newCertStore(certs [][]byte) (certStore, error) {
	if len(certs) == 0 {
		return nil, errors.New("no certificates")
	}
	var out certStore
	for i, data := range certs {
		raw := data
		if block, _ := pem.Decode(data); block != nil {
			raw = block.Bytes
		}
		parsed, err := x509.ParseCertificates(raw)
		if err != nil {
			return nil, fmt.Errorf("failed to parse certificate %d: %w", i+1, err)
		}
		out = append(out, parsed...)
	}
	return out, nil
}

func (s certStore) GetCertificates(context.Context, truststore.Type, string) ([]*x509.Certificate, error) {
	return s, nil
}

// Verify reports Verified when a signature of ref satisfies the trust
// policy, Ignored when the applicable policy only logs (or skips) the
// outcome, and fails otherwise.
func (v *notationVerifier) Verify(ctx context.Context, ref name.Digest) (Result, error) {
	repo, err := v.repository(ref)
	if err != nil {
		return 0, err
	}
	_, outcomes, err := notation.Verify(ctx, v.verifier, registry.NewRepository(repo), notation.VerifyOptions{
		ArtifactReference:    ref.String(),
		MaxSignatureAttempts: notationMaxSignatures,
	})
	if err != nil {
		return 0, err
	}
	if len(outcomes) == 0 {
		return 0, fmt.Errorf("signature verification failed for all the signatures associated with %s", ref)
	}
	outcome := outcomes[0]
	if outcome.VerificationLevel == trustpolicy.LevelSkip {
		return Ignored, nil
	}
	// notation.Verify fails on enforced checks; a failed check here was
	// only logged by the policy, and a logged authenticity failure means
	// the signature is not known to be genuine.
	for _, r := range outcome.VerificationResults {
		if r.Error != nil && r.Type == trustpolicy.TypeAuthenticity {
			return Ignored, nil
		}
	}
	return Verified, nil
}

// repository is the oras repository of ref reached as v.reg says, with
// the keychain's credentials for its registry.
func (v *notationVerifier) repository(ref name.Digest) (*orasremote.Repository, error) {
	repo, err := orasremote.NewRepository(ref.Context().Name())
	if err != nil {
		return nil, fmt.Errorf("invalid repository '%s': %w", ref.Context().Name(), err)
	}
	repo.PlainHTTP = v.reg.PlainHTTP
	hc := &http.Client{Transport: v.reg.Transport}
	if hc.Transport == nil {
		hc.Transport = http.DefaultTransport
	}
	keychain := v.reg.Keychain
	repo.Client = &auth.Client{
		Client: hc,
		Cache:  auth.NewCache(),
		Credential: func(ctx context.Context, hostport string) (auth.Credential, error) {
			if keychain == nil || hostport != ref.RegistryStr() {
				return auth.EmptyCredential, nil
			}
			a, err := keychain.Resolve(ref.Context())
			if err != nil {
				return auth.EmptyCredential, err
			}
			cfg, err := authn.Authorization(ctx, a)
			if err != nil {
				return auth.EmptyCredential, err
			}
			return auth.Credential{Username: cfg.Username, Password: cfg.Password,
				RefreshToken: cfg.IdentityToken, AccessToken: cfg.RegistryToken}, nil
		},
	}
	return repo, nil
}
