package storage

import (
	"crypto"
	_ "crypto/sha1" // sha1, one of Flux's --artifact-digest-algo values
	"fmt"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	_ "github.com/opencontainers/go-digest/blake3" // registers blake3
)

// SHA1 is the one algorithm Flux accepts that go-digest does not register.
const SHA1 digest.Algorithm = "sha1"

// DigestAlgorithms are the values Flux's source-controller accepts for
// --artifact-digest-algo: what go-digest registers, blake3 and sha1 included.
var DigestAlgorithms = []digest.Algorithm{SHA1, digest.SHA256, digest.SHA384, digest.SHA512, digest.BLAKE3}

func init() {
	digest.RegisterAlgorithm(SHA1, crypto.SHA1)
}

// DigestAlgorithm returns the algorithm named name, or an error naming
// the ones accepted.
func DigestAlgorithm(name string) (digest.Algorithm, error) {
	a := digest.Algorithm(name)
	if !slices.Contains(DigestAlgorithms, a) || !a.Available() {
		names := make([]string, len(DigestAlgorithms))
		for i, d := range DigestAlgorithms {
			names[i] = d.String()
		}
		return "", fmt.Errorf("%w: %q, want one of %s", digest.ErrDigestUnsupported, name, strings.Join(names, ", "))
	}
	return a, nil
}
