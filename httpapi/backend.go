package httpapi

import (
	"context"
	"io"

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
	// Open returns the artifact's content from the local store.
	Open(a storage.Artifact) (Blob, error)
	// WaitFor blocks until the artifact at path is applied locally, or this
	// replica has applied everything it knows to be committed and still lacks
	// it (storage.ErrNotFound), or ctx ends.
	WaitFor(ctx context.Context, path string) (storage.Artifact, error)
	// Status describes this replica and its peers.
	Status() raftstore.Status
	// Ready returns nil when this replica should receive traffic.
	Ready() error
}

// Blob is an artifact's content in the local store. Reads verify each
// chunk's checksum before returning its bytes and fail with
// storage.ErrCorrupt otherwise, so corrupt bytes are never served.
type Blob interface {
	io.ReadSeeker
	io.Closer
	// WriteTo writes the whole content chunk by chunk.
	io.WriterTo
	Size() int64
}
