package httpapi

import (
	"context"

	"github.com/sourceraft/sourceraft/raftstore"
	"github.com/sourceraft/sourceraft/storage"
)

// Backend is the replica the HTTP layer serves from. Reads are local; the
// Storage writes are replicated and fail with storage.ErrNotLeader on a
// follower, which the internal API answers by forwarding to the leader.
type Backend interface {
	storage.Storage
	// Lookup returns the locally applied artifact at path, or storage.ErrNotFound.
	Lookup(path string) (storage.Artifact, error)
	// OpenBlob returns the artifact's content from the local store.
	OpenBlob(a storage.Artifact) (storage.Blob, error)
	// WaitFor blocks until the artifact at path is applied locally, or this
	// replica has applied everything it knows to be committed and still lacks
	// it (storage.ErrNotFound), or ctx ends.
	WaitFor(ctx context.Context, path string) (storage.Artifact, error)
	// Status describes this replica and its peers.
	Status() raftstore.Status
	// Ready returns nil when this replica should receive traffic.
	Ready() error
	// RegisterPeer records a replica's addresses through the log (leader
	// only; storage.ErrNotLeader elsewhere). PUT /v1/nodes/<id> calls it
	// with the JSON body of a raftstore.Peer.
	RegisterPeer(ctx context.Context, p raftstore.Peer) error
	// ContentHash hashes the applied state; GET /v1/content-hash.
	ContentHash() (raftstore.ContentHash, error)
	// RemovePeer takes a replica out of the Raft configuration and the
	// address records (leader only). DELETE /v1/nodes/<id> calls it.
	RemovePeer(ctx context.Context, id string) error
}
