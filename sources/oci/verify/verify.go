// Package verify checks the signatures of OCI artifacts in a registry the
// way Flux's spec.verify does, for OCIRepository and for charts of an oci
// HelmRepository: cosign with public keys or keyless against a Sigstore
// trusted root, and notation with a trust policy and CA certificates.
// It knows registries and signatures and nothing of Kubernetes: keys,
// roots, policies and certificates come in as bytes, registry access as
// the Registry the pull itself uses.
package verify

import (
	"context"
	"fmt"
	"net/http"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// The verification providers of spec.verify.provider.
const (
	ProviderCosign   = "cosign"
	ProviderNotation = "notation"
)

// Result is what a successful Verify found.
type Result int

const (
	// Verified: a signature of the digest verified.
	Verified Result = iota + 1
	// Ignored: the trust policy asked not to enforce the outcome
	// (notation's skip level, or an authenticity failure only logged);
	// Flux then neither marks the source verified nor fails it.
	Ignored
)

// Registry is how a verifier reaches the registry: the keychain,
// transport and scheme of the pull it verifies, so that signatures are
// read with the same credentials, TLS and insecure choice.
type Registry struct {
	// Keychain resolves the credentials of a registry; nil is anonymous.
	Keychain authn.Keychain
	// Transport carries every request; nil is go-containerregistry's
	// default.
	Transport http.RoundTripper
	// PlainHTTP talks HTTP instead of HTTPS.
	PlainHTTP bool
}

// remoteOptions are the go-containerregistry options of r under ctx.
func (r Registry) remoteOptions(ctx context.Context) []remote.Option {
	opts := []remote.Option{remote.WithContext(ctx)}
	if r.Transport != nil {
		opts = append(opts, remote.WithTransport(r.Transport))
	}
	if r.Keychain != nil {
		opts = append(opts, remote.WithAuthFromKeychain(r.Keychain))
	}
	return opts
}

// nameOptions parse references to r's registry.
func (r Registry) nameOptions() []name.Option {
	if r.PlainHTTP {
		return []name.Option{name.Insecure}
	}
	return nil
}

// Digest resolves ref (<registry>/<repository>:<tag> or @<digest>) to
// the digest of its manifest, so that what is verified and what is
// pulled is one manifest.
func (r Registry) Digest(ctx context.Context, ref string) (name.Digest, error) {
	parsed, err := name.ParseReference(ref, r.nameOptions()...)
	if err != nil {
		return name.Digest{}, fmt.Errorf("invalid reference '%s': %w", ref, err)
	}
	if d, ok := parsed.(name.Digest); ok {
		return d, nil
	}
	desc, err := remote.Head(parsed, r.remoteOptions(ctx)...)
	if err != nil {
		// Some registries answer HEAD badly; GET tells the truth.
		gdesc, gerr := remote.Get(parsed, r.remoteOptions(ctx)...)
		if gerr != nil {
			return name.Digest{}, fmt.Errorf("failed to resolve '%s': %w", ref, gerr)
		}
		desc = &gdesc.Descriptor
	}
	return parsed.Context().Digest(desc.Digest.String()), nil
}

// Verifier checks that a manifest is signed as its configuration asks.
type Verifier interface {
	// Verify fails when no signature of ref verifies; the error says why
	// in Flux's words.
	Verify(ctx context.Context, ref name.Digest) (Result, error)
}
