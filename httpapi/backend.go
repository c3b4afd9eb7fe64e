package httpapi

import (
	"context"
	"io"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/fsm"
	"github.com/sourceraft/sourceraft/storage"
)

// Backend is the replica the HTTP layer serves from. Reads are local; the
// Storage writes are replicated and fail with storage.ErrNotLeader on a
// follower, which the internal API answers by forwarding to the leader.
type Backend interface {
	storage.Storage
	// OpenArtifact looks up the locally applied artifact at k and opens
	// its content, or fails with storage.ErrNotFound (storage.ErrCorrupt
	// for a blob found bad before anything was sent).
	OpenArtifact(k storage.Key) (*fsm.Content, error)
	// OpenRemote gives content whose blob rests in the object store
	// (Content.Remote) its bytes, or returns the URL to redirect the
	// download to.
	OpenRemote(ctx context.Context, c *fsm.Content) (redirect string, err error)
	// WaitFor blocks until the artifact at k is applied locally and opens
	// it, or this replica has applied everything it knows to be committed
	// and still lacks it (storage.ErrNotFound), or ctx ends.
	WaitFor(ctx context.Context, k storage.Key) (*fsm.Content, error)
	// OnCorrupt sets the function told about every blob file found not to
	// match its digest; RepairBlob then replaces it with a peer's copy,
	// found through ArtifactWithDigest.
	OnCorrupt(fn func(digest string))
	RepairBlob(digest string, size int64, r io.Reader) error
	ArtifactWithDigest(digest string) (storage.Artifact, error)
	// Status describes this replica and its peers.
	Status() clusterapi.Status
	// Ready returns nil when this replica should receive traffic.
	Ready() error
	// RegisterPeer records a replica's addresses through the log (leader
	// only; storage.ErrNotLeader elsewhere). PUT /v1/nodes/<id> calls it
	// with the JSON body of a clusterapi.Peer.
	RegisterPeer(ctx context.Context, p clusterapi.Peer) error
	// ContentHash hashes the applied state; GET /v1/content-hash.
	ContentHash() (clusterapi.ContentHash, error)
	// RemovePeer takes a replica out of the Raft configuration and the
	// address records (leader only). DELETE /v1/nodes/<id> calls it.
	RemovePeer(ctx context.Context, id string) error
}
