// Package fsm is the replicated state machine behind sourceraft: the bbolt
// layout, the command codec, the deterministic Apply, snapshot/restore and
// the read views every replica serves artifacts from. It knows nothing of
// the network, the clock, randomness or Kubernetes: its state is a pure
// function of the Raft log it is fed.
//
// # Layout
//
// Metadata in one bbolt file, blob bytes in files beside it (layout 3):
//
//	meta       "applied"  → big-endian uint64, the last applied Raft index
//	           "layout"   → big-endian uint64, this layout's version (3)
//	           "counters" → artifacts, artifact bytes, blobs, blob bytes (4 × uint64)
//	artifacts  path → the commit command's artifact JSON, stored verbatim
//	blobs      sha256 digest → size(8) refs(4), a committed blob; an artifact
//	           names it by its blobDigest, or by its digest when that is sha256
//	uploads    upload-id → startedAt(8) chunks(4) bytes(8), uncommitted uploads
//	nodes      node id → the set-node command's JSON, stored verbatim
//	current    kind/namespace/name/ → path of the object's newest committed
//	           artifact, what its alias (latest.tar.gz, index.yaml) serves
//
//	blobs/uploads/<sha256 of the upload id>  an upload's chunks, each written at its offset
//	blobs/sha256/<hex>                       committed content, named by its digest
//	blobs/tmp/                               restores, migrations, repairs before their rename
//
// A chunk is written into its upload file with a plain pwrite; the files a
// batch wrote are synced before the batch's bbolt transaction commits, so
// the database never records a chunk the disk may lose. The commit hashes
// the upload file, syncs it and hard-links it to its content address, then
// records the blob, the artifact and the counters. The upload file (and a
// blob file whose last reference a command dropped) is unlinked only after
// that transaction is durable, so a replay after a crash at any point
// finds what it needs: a chunk rewrites the same bytes at the same offset,
// a commit finds its upload file (and the blob file already linked). Open
// removes the files no record references. Identical content is stored once
// (the blob counts its references). A blob file is never written again:
// downloads send it with sendfile, and an unlinked file stays readable
// through the descriptors still open on it.
//
// A layout 2 file (blob bytes in a chunks bucket) is migrated on Open, one
// blob at a time (migrate.go).
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
// twice. If committing fails, or writing, syncing or linking a blob file
// fails (disk full, I/O error), the entry can be neither skipped (the
// replica would diverge) nor half applied: the transaction is rolled back
// and the whole batch retried, file steps included (they are idempotent),
// with a backoff from 100ms doubling to 5s until it succeeds. The error is
// logged once per distinct message and reported by Err until a commit
// succeeds, so readiness and the cluster status can show it. Only Close
// ends the retries.
//
// # Snapshots
//
// A snapshot (snapshot.go) is a stream: a header, the bbolt file from a
// read transaction opened on the FSM goroutine, every blob file (hard-linked
// into a pin directory at that moment, so a delete applied meanwhile cannot
// take it away), every upload file up to its length at that index, and a
// trailer. A sink that implements FileLinker keeps a blob file by link
// instead of receiving its bytes. Restore keeps the blob files it already
// holds once their size and digest check out, writes the others through a
// temporary file, and swaps the database in under the write lock.
//
// # Reads
//
// Every read view runs in its own short read transaction under a read lock
// that Close and Restore take exclusively. Open looks up an artifact and
// opens its blob file in one call; small blobs are held in memory once
// verified. Each blob file is checked against its digest the first time
// this process serves it (the download streams through the hash and holds
// its last bytes back until the digest matches) and by a background scrub;
// a mismatch is reported to the OnCorrupt hook, and Repair replaces the
// file with a verified copy from a peer, through a temporary file.
package fsm
