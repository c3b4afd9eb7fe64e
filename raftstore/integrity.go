package raftstore

import (
	"context"
	"errors"
	"io"

	"golang.org/x/time/rate"

	"github.com/sourceraft/sourceraft/storage"
)

// scrubBurst is the most the scrub reads at once: one read of the hashing
// buffer.
const scrubBurst = 256 << 10

// Scrub verifies every blob file against its digest, one after the other
// and again from the first after the last, reading at most bytesPerSec,
// until ctx ends. A corrupt file is reported to the OnCorrupt function (the
// artifact server repairs it from a peer). Zero or less does nothing.
func (n *Node) Scrub(ctx context.Context, bytesPerSec int64) {
	if bytesPerSec <= 0 {
		return
	}
	lim := rate.NewLimiter(rate.Limit(bytesPerSec), scrubBurst)
	wait := func(k int) error { return lim.WaitN(ctx, min(k, scrubBurst)) }
	var after string
	for ctx.Err() == nil {
		digest, _, ok, err := n.fsm.NextBlob(after)
		if err != nil {
			n.log.Warn("scrub: list blobs", "error", err)
			return
		}
		if !ok {
			if after == "" {
				// Nothing stored: look again after a second's worth of reading.
				if lim.WaitN(ctx, min(int(bytesPerSec), scrubBurst)) != nil {
					return
				}
			}
			after = ""
			continue
		}
		after = digest
		err = n.fsm.VerifyPaced(digest, wait)
		switch {
		case err == nil, errors.Is(err, storage.ErrNotFound), ctx.Err() != nil:
		case errors.Is(err, storage.ErrCorrupt):
			n.log.Error("scrub: blob file corrupt", "digest", digest, "error", err)
		default:
			n.log.Warn("scrub: verify blob", "digest", digest, "error", err)
		}
	}
}

// OnCorrupt sets the function told about every blob file found corrupt,
// before or after Open.
func (n *Node) OnCorrupt(fn func(digest string)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.onCorrupt = fn
	if n.fsm != nil {
		n.fsm.OnCorrupt(fn)
	}
}

// RepairBlob replaces a corrupt blob file with a peer's copy read from r,
// which must hash to digest.
func (n *Node) RepairBlob(digest string, size int64, r io.Reader) error {
	return n.fsm.Repair(digest, size, r)
}

// ArtifactWithDigest returns an artifact whose content is digest, to ask
// peers for it by path.
func (n *Node) ArtifactWithDigest(digest string) (storage.Artifact, error) {
	return n.fsm.ArtifactWithDigest(digest)
}
