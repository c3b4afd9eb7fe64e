// Package fsm is the replicated state machine behind sourceraft: the bbolt
// layout, the command codec, the deterministic Apply, snapshot/restore and
// the read views every replica serves artifacts from. It knows nothing of
// the network, the clock, randomness or Kubernetes: its state is a pure
// function of the Raft log it is fed.
//
// # Layout
//
// One bbolt file with these top-level buckets:
//
//	meta       "applied" → big-endian uint64, the last applied Raft index
//	           "layout"  → big-endian uint64, this layout's version (1)
//	artifacts  path → the commit command's artifact JSON, stored verbatim
//	blobs      digest → size(8) chunks(4) refs(4) upload-id, a committed blob
//	chunks     upload-id → bucket: seq(4, big-endian) → bucket: "c" → crc32c(4) data
//	uploads    upload-id → startedAt(8) chunks(4) bytes(8), uncommitted uploads
//	nodes      node id → the set-node command's JSON, stored verbatim
//
// A blob keeps the chunk bucket of the upload that first carried its digest;
// a later commit of the same digest only increments the reference count and
// drops its own chunks, so identical content is stored once. The blob and its
// chunks go when the last artifact referencing it does.
//
// # Commands
//
// A command is one type byte followed by the body. The low seven bits are
// the type; the high bit marks a command older replicas may skip when they
// do not know the type, so new optional commands can be rolled out one
// replica at a time. Every type and its handler is registered in one list
// (commands.go). Chunks are binary with the checksum immediately before the
// data, so the stored value is a slice of the log entry and the chunk is
// never copied on apply; the other commands are small.
//
// Apply depends only on the command bytes and the current state: times and
// garbage-collection victims are chosen by the leader and carried in the
// command. Each handler validates everything first and only then writes, so
// a rejected command leaves the state untouched. Two kinds of failure:
//
//   - A command that cannot be decoded, or whose type is unknown without the
//     skip bit, panics. Carrying on would let replicas silently diverge.
//   - A command that breaks a business rule (a commit of an unknown or
//     incomplete upload, a chunk out of sequence or failing its checksum) is
//     returned as the Apply result, an error wrapping one of the sentinels
//     below. The state is unchanged and the applied index still advances.
//
// # Applied index and I/O errors
//
// ApplyBatch applies a whole batch, and records its last index, in one bbolt
// write transaction, so a crash leaves either all of it or none of it, and a
// restart skips every log at or below the stored index instead of applying it
// twice. If committing fails (disk full, I/O error) the entry can be neither
// skipped (the replica would diverge) nor half applied: the same transaction
// is retried with a backoff from 100ms doubling to 5s until it succeeds. The
// error is logged once per distinct message and reported by Err until a
// commit succeeds, so readiness and the cluster status can show it. Only
// Close ends the retries.
//
// # Snapshots
//
// A snapshot is the bbolt file itself, streamed from a read transaction
// opened on the FSM goroutine (so it is exactly the applied state) while
// applying continues. Restore streams the file to a temporary file next to
// the database, checks it opens and has the meta bucket, and then swaps it
// in under the write lock.
//
// # Reads
//
// Every read view runs in its own short read transaction under a read lock
// that Close and Restore take exclusively, so no reader ever sees a closed
// database. A Blob reads one chunk per transaction and verifies its checksum
// before returning any of its bytes: long read transactions would stop bbolt
// from reusing pages and grow the file while large artifacts are served. The
// database is memory-mapped with a large initial size so that a snapshot's
// long read transaction does not block a writer that needs to grow the map.
package fsm
