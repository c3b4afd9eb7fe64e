package fsm

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/hashicorp/raft"
	"github.com/sourceraft/sourceraft/storage"
	bolt "go.etcd.io/bbolt"
)

// Business-rule failures, returned as Apply results wrapped with context.
// The command changed nothing; the applied index still advanced.
var (
	ErrUnknownUpload    = errors.New("unknown upload")
	ErrIncompleteUpload = errors.New("upload does not match its commit")
	ErrChunkSequence    = errors.New("chunk out of sequence")
	ErrChunkChecksum    = errors.New("chunk checksum mismatch")
	ErrInvalidCommand   = errors.New("invalid command")
)

// handler decodes and applies one command type inside the batch's write
// transaction. apply validates before it writes, so an error return means
// nothing was written.
type handler struct {
	name   string
	decode func(body []byte) (any, error)
	apply  func(tx *bolt.Tx, cmd any) error
}

// handlers is every command this replica understands.
var handlers = registerAll(map[cmdType]handler{})

func registerAll(t map[cmdType]handler) map[cmdType]handler {
	register(t, cmdChunk, "chunk", decodeChunk, applyChunk)
	register(t, cmdCommit, "commit", decodeCommit, applyCommit)
	register(t, cmdDeleteArtifacts, "delete-artifacts", decodeStrings, applyDeleteArtifacts)
	register(t, cmdAbortUploads, "abort-uploads", decodeStrings, applyAbortUploads)
	register(t, cmdExpireUploads, "expire-uploads", decodeExpireUploads, applyExpireUploads)
	register(t, cmdSetNode, "set-node", decodeSetNode, applySetNode)
	register(t, cmdRemoveNode, "remove-node", decodeRemoveNode, applyRemoveNode)
	return t
}

func register[T any](t map[cmdType]handler, typ cmdType, name string, decode func([]byte) (T, error), apply func(*bolt.Tx, T) error) {
	if typ&skipUnknown != 0 {
		panic(fmt.Sprintf("fsm: command %s: type %#x uses the skip bit", name, uint8(typ)))
	}
	if prev, dup := t[typ]; dup {
		panic(fmt.Sprintf("fsm: command type %d registered for both %s and %s", typ, prev.name, name))
	}
	t[typ] = handler{
		name:   name,
		decode: func(b []byte) (any, error) { return decode(b) },
		apply:  func(tx *bolt.Tx, cmd any) error { return apply(tx, cmd.(T)) },
	}
}

// decodeCommand decodes data without applying it. A nil handler with a nil
// error is an unknown type carrying the skip bit.
func decodeCommand(data []byte) (*handler, any, error) {
	if len(data) == 0 {
		return nil, nil, fmt.Errorf("%w: empty", errMalformed)
	}
	typ := cmdType(data[0]) &^ skipUnknown
	h, ok := handlers[typ]
	if !ok {
		if cmdType(data[0])&skipUnknown != 0 {
			return nil, nil, nil
		}
		return nil, nil, fmt.Errorf("%w: unknown command type %d", errMalformed, typ)
	}
	cmd, err := h.decode(data[1:])
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", h.name, err)
	}
	return &h, cmd, nil
}

// dispatch applies one command log and returns its business error.
func dispatch(tx *bolt.Tx, l *raft.Log) error {
	h, cmd, err := decodeCommand(l.Data)
	if err != nil {
		panic(fmt.Errorf("fsm: cannot apply log %d: %w", l.Index, err))
	}
	if h == nil {
		slog.Warn("fsm: skipping unknown optional command; upgrade this replica", "index", l.Index, "type", l.Data[0])
		return nil
	}
	return h.apply(tx, cmd)
}

// must panics on a write bbolt refused after the handler validated it: only
// a bug or a damaged file gets here, and carrying on would diverge.
func must(err error) {
	if err != nil {
		panic(fmt.Errorf("fsm: validated write failed: %w", err))
	}
}

func applyChunk(tx *bolt.Tx, c chunkCmd) error {
	switch {
	case c.UploadID == "" || len(c.UploadID) > maxIDLen:
		return fmt.Errorf("chunk %d: upload id of %d bytes: %w", c.Seq, len(c.UploadID), ErrInvalidCommand)
	case len(c.Data) > storage.MaxChunkSize:
		return fmt.Errorf("chunk %d of upload %q: %d bytes exceeds %d: %w", c.Seq, c.UploadID, len(c.Data), storage.MaxChunkSize, ErrInvalidCommand)
	case checksum(c.Data) != c.crc:
		return fmt.Errorf("chunk %d of upload %q: %w", c.Seq, c.UploadID, ErrChunkChecksum)
	}
	id := []byte(c.UploadID)
	uploads, chunks := tx.Bucket(bucketUploads), tx.Bucket(bucketChunks)
	up, started := getUpload(uploads, id)
	switch {
	case c.Seq == 0 && (started || chunks.Bucket(id) != nil):
		return fmt.Errorf("chunk 0 of upload %q: upload id already used: %w", c.UploadID, ErrChunkSequence)
	case c.Seq != 0 && !started:
		return fmt.Errorf("chunk %d of upload %q: %w", c.Seq, c.UploadID, ErrUnknownUpload)
	case c.Seq != 0 && c.Seq != up.Chunks:
		return fmt.Errorf("chunk %d of upload %q: want chunk %d: %w", c.Seq, c.UploadID, up.Chunks, ErrChunkSequence)
	}

	var b *bolt.Bucket
	if c.Seq == 0 {
		up = uploadRecord{StartedAt: c.StartedAt}
		var err error
		b, err = chunks.CreateBucket(id)
		must(err)
	} else if b = chunks.Bucket(id); b == nil {
		must(fmt.Errorf("upload %q has no chunks bucket: %w", c.UploadID, storage.ErrCorrupt))
	}
	b.FillPercent = 1.0 // keys only ever append
	must(putChunk(b, c.Seq, c.value))
	up.Chunks++
	up.Bytes += int64(len(c.Data))
	must(uploads.Put(id, up.encode()))
	return nil
}

func applyCommit(tx *bolt.Tx, c commitCmd) error {
	a := c.Artifact
	path := a.Path()
	if _, err := storage.ParseWritePath(path); err != nil {
		return fmt.Errorf("commit of upload %q: %w", c.UploadID, err)
	}
	if a.Digest == "" || len(a.Digest) > maxIDLen {
		return fmt.Errorf("commit of upload %q: digest of %d bytes: %w", c.UploadID, len(a.Digest), ErrInvalidCommand)
	}
	id := []byte(c.UploadID)
	uploads, blobs := tx.Bucket(bucketUploads), tx.Bucket(bucketBlobs)
	up, ok := getUpload(uploads, id)
	if !ok {
		return fmt.Errorf("commit of upload %q: %w", c.UploadID, ErrUnknownUpload)
	}
	if up.Chunks != c.Chunks || up.Bytes != a.Size {
		return fmt.Errorf("commit of upload %q: has %d chunks, %d bytes; commit says %d chunks, %d bytes: %w",
			c.UploadID, up.Chunks, up.Bytes, c.Chunks, a.Size, ErrIncompleteUpload)
	}
	digest := []byte(a.Digest)
	blob, stored := getBlob(blobs, digest)
	if stored && blob.Size != a.Size {
		return fmt.Errorf("commit of upload %q: %s is stored with %d bytes, not %d: %w",
			c.UploadID, a.Digest, blob.Size, a.Size, storage.ErrDigestMismatch)
	}

	// Reference the new blob before dereferencing the path's old one, so
	// recommitting the same content never drops it on the way.
	must(uploads.Delete(id))
	if stored {
		blob.Refs++
		must(tx.Bucket(bucketChunks).DeleteBucket(id))
	} else {
		blob = blobRecord{Size: a.Size, Chunks: c.Chunks, Refs: 1, Upload: c.UploadID}
	}
	must(blobs.Put(digest, blob.encode()))
	artifacts := tx.Bucket(bucketArtifacts)
	if old := artifacts.Get([]byte(path)); old != nil {
		release(tx, storedDigest(path, old))
	}
	must(artifacts.Put([]byte(path), c.raw))
	return nil
}

func applyDeleteArtifacts(tx *bolt.Tx, paths []string) error {
	artifacts := tx.Bucket(bucketArtifacts)
	for _, p := range paths {
		old := artifacts.Get([]byte(p))
		if old == nil {
			continue
		}
		release(tx, storedDigest(p, old))
		must(artifacts.Delete([]byte(p)))
	}
	return nil
}

func applyAbortUploads(tx *bolt.Tx, ids []string) error {
	for _, id := range ids {
		dropUpload(tx, []byte(id))
	}
	return nil
}

func applyExpireUploads(tx *bolt.Tx, before int64) error {
	var expired [][]byte
	err := tx.Bucket(bucketUploads).ForEach(func(k, v []byte) error {
		up, err := decodeUploadRecord(v)
		if err != nil {
			return fmt.Errorf("upload %q: %w", k, err)
		}
		if up.StartedAt < before {
			expired = append(expired, append([]byte(nil), k...))
		}
		return nil
	})
	must(err)
	for _, id := range expired {
		dropUpload(tx, id)
	}
	return nil
}

func applySetNode(tx *bolt.Tx, n nodeCmd) error {
	if n.ID == "" || len(n.ID) > maxIDLen {
		return fmt.Errorf("set node: id of %d bytes: %w", len(n.ID), ErrInvalidCommand)
	}
	must(tx.Bucket(bucketNodes).Put([]byte(n.ID), n.raw))
	return nil
}

func applyRemoveNode(tx *bolt.Tx, id string) error {
	nodes := tx.Bucket(bucketNodes)
	if nodes.Get([]byte(id)) != nil {
		must(nodes.Delete([]byte(id)))
	}
	return nil
}

func getUpload(uploads *bolt.Bucket, id []byte) (uploadRecord, bool) {
	v := uploads.Get(id)
	if v == nil {
		return uploadRecord{}, false
	}
	up, err := decodeUploadRecord(v)
	must(err)
	return up, true
}

func getBlob(blobs *bolt.Bucket, digest []byte) (blobRecord, bool) {
	v := blobs.Get(digest)
	if v == nil {
		return blobRecord{}, false
	}
	b, err := decodeBlobRecord(v)
	must(err)
	return b, true
}

// storedDigest reads the digest of an artifact record written by a commit,
// which validated it, so a failure means the file is damaged.
func storedDigest(path string, v []byte) []byte {
	var a struct {
		Digest string `json:"digest"`
	}
	if err := json.Unmarshal(v, &a); err != nil {
		must(fmt.Errorf("artifact %q: %v: %w", path, err, storage.ErrCorrupt))
	}
	return []byte(a.Digest)
}

// release drops one reference to a blob, deleting it and its chunks with
// the last one.
func release(tx *bolt.Tx, digest []byte) {
	blobs := tx.Bucket(bucketBlobs)
	blob, ok := getBlob(blobs, digest)
	if !ok {
		return
	}
	if blob.Refs > 1 {
		blob.Refs--
		must(blobs.Put(digest, blob.encode()))
		return
	}
	must(blobs.Delete(digest))
	if chunks := tx.Bucket(bucketChunks); chunks.Bucket([]byte(blob.Upload)) != nil {
		must(chunks.DeleteBucket([]byte(blob.Upload)))
	}
}

// dropUpload removes an uncommitted upload and its chunks. A committed
// upload has no record, so its chunks, now a blob's, are never touched.
func dropUpload(tx *bolt.Tx, id []byte) {
	uploads := tx.Bucket(bucketUploads)
	if uploads.Get(id) == nil {
		return
	}
	must(uploads.Delete(id))
	if chunks := tx.Bucket(bucketChunks); chunks.Bucket(id) != nil {
		must(chunks.DeleteBucket(id))
	}
}
