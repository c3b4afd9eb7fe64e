package raftstore

import (
	"fmt"

	"github.com/opencontainers/go-digest"

	"github.com/sourceraft/sourceraft/storage"
)

// contentDigests hashes an upload once for every algorithm Store needs:
// sha256 (the blob address), the configured artifact algorithm, and that
// of the digest a caller expects the content to have.
type contentDigests map[digest.Algorithm]digest.Digester

// newContentDigests hashes for sha256, algo and the algorithm of expected
// (when set), failing before anything is read if expected is not a digest
// this binary can compute.
func newContentDigests(algo digest.Algorithm, expected string) (contentDigests, error) {
	d := contentDigests{digest.SHA256: digest.SHA256.Digester()}
	d.add(algo)
	if expected != "" {
		exp, err := digest.Parse(expected)
		if err != nil {
			return nil, fmt.Errorf("%w: expected digest %q: %w", storage.ErrDigestMismatch, expected, err)
		}
		d.add(exp.Algorithm())
	}
	return d, nil
}

func (d contentDigests) add(a digest.Algorithm) {
	if _, ok := d[a]; !ok {
		d[a] = a.Digester()
	}
}

// Write feeds p to every hash; a hash.Hash never fails a write.
func (d contentDigests) Write(p []byte) (int, error) {
	for _, h := range d {
		h.Hash().Write(p)
	}
	return len(p), nil
}

// artifact sets a's Digest in algo and, when algo is not sha256, its
// BlobDigest, after checking the content against expected (if set).
func (d contentDigests) artifact(a *storage.Artifact, algo digest.Algorithm, expected string) error {
	if expected != "" {
		if got := d[digest.Digest(expected).Algorithm()].Digest().String(); got != expected {
			return fmt.Errorf("%w: expected %s, content is %s", storage.ErrDigestMismatch, expected, got)
		}
	}
	a.Digest, a.BlobDigest = d[algo].Digest().String(), ""
	if algo != digest.SHA256 {
		a.BlobDigest = d[digest.SHA256].Digest().String()
	}
	return nil
}
