package reconcilers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/fluxcd/pkg/apis/meta"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sourceraft/sourceraft/sources/oci/verify"
)

// trustedRootKey is the spec.verify.trustedRootSecretRef key of the
// Sigstore trusted root, as Flux names it.
const trustedRootKey = "trusted_root.json"

// errKeylessPublicSigstore: keyless cosign verification without a
// trusted root would fetch the public Sigstore root and query Rekor
// online, which this build does not do; retrying cannot help.
var errKeylessPublicSigstore = errors.New("keyless verification against the public Sigstore infrastructure is not supported: " +
	"set spec.verify.trustedRootSecretRef to a Secret with a trusted_root.json, or use spec.verify.secretRef with public keys")

// newOCIVerifier builds the verifier spec.verify asks for from the
// Secrets of namespace it names, reaching the registry as reg says:
//   - cosign with secretRef: every '.pub' key of the Secret is trusted;
//   - cosign without secretRef: keyless, against trustedRootRef's
//     trusted_root.json and the matchOIDCIdentity regular expressions
//     (trustedRootRef nil: errKeylessPublicSigstore);
//   - notation: the Secret's trustpolicy.json and its '.pem' and '.crt'
//     CA certificates.
func newOCIVerifier(ctx context.Context, c client.Reader, namespace, provider string, secretRef *meta.LocalObjectReference,
	identities []sourcev1.OIDCIdentityMatch, trustedRootRef *meta.LocalObjectReference, reg verify.Registry) (verify.Verifier, error) {
	switch provider {
	case verify.ProviderCosign:
		if secretRef != nil {
			secret, err := getSecret(ctx, c, namespace, secretRef.Name)
			if err != nil {
				return nil, err
			}
			keys := secretValues(secret, ".pub")
			if len(keys) == 0 {
				return nil, fmt.Errorf("no public keys found in secret '%s/%s'", namespace, secretRef.Name)
			}
			return verify.NewCosignKeys(keys, reg)
		}
		if trustedRootRef == nil {
			return nil, errKeylessPublicSigstore
		}
		secret, err := getSecret(ctx, c, namespace, trustedRootRef.Name)
		if err != nil {
			return nil, fmt.Errorf("failed to read trusted root from secret '%s/%s': %w", namespace, trustedRootRef.Name, err)
		}
		data, ok := secret.Data[trustedRootKey]
		if !ok {
			return nil, fmt.Errorf("failed to read trusted root from secret '%s/%s': '%s' not found in secret", namespace, trustedRootRef.Name, trustedRootKey)
		}
		ids := make([]verify.Identity, 0, len(identities))
		for _, id := range identities {
			ids = append(ids, verify.Identity{Issuer: id.Issuer, Subject: id.Subject})
		}
		return verify.NewCosignKeyless(data, ids, reg)
	case verify.ProviderNotation:
		if secretRef == nil {
			return nil, errors.New("verification secret cannot be empty")
		}
		secret, err := getSecret(ctx, c, namespace, secretRef.Name)
		if err != nil {
			return nil, err
		}
		policy, ok := secret.Data[verify.TrustPolicyKey]
		if !ok {
			return nil, fmt.Errorf("'%s' not found in secret '%s/%s'", verify.TrustPolicyKey, namespace, secretRef.Name)
		}
		certs := secretValues(secret, ".pem", ".crt")
		if len(certs) == 0 {
			return nil, fmt.Errorf("no certificates found in secret '%s/%s'", namespace, secretRef.Name)
		}
		return verify.NewNotation(policy, certs, reg)
	}
	return nil, fmt.Errorf("unsupported verification provider: %s", provider)
}

// secretValues are the values of the secret's keys ending in one of
// suffixes, in key order so that verification is deterministic.
func secretValues(secret *corev1.Secret, suffixes ...string) [][]byte {
	var keys []string
	for k := range secret.Data {
		for _, s := range suffixes {
			if strings.HasSuffix(k, s) {
				keys = append(keys, k)
				break
			}
		}
	}
	slices.Sort(keys)
	out := make([][]byte, 0, len(keys))
	for _, k := range keys {
		out = append(out, secret.Data[k])
	}
	return out
}

// verifyProviderName is the provider as Flux's messages name it:
// 'cosign keyless' when cosign verifies without keys.
func verifyProviderName(provider string, hasSecret bool) string {
	if provider == verify.ProviderCosign && !hasSecret {
		return provider + " keyless"
	}
	return provider
}
