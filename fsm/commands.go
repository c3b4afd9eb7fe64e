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
// transaction. apply validates before it writes, so a business error means
// nothing was written; an ioError (the disk failed) rolls the whole batch
// back to be retried.
type handler struct {
	name   string
	decode func(body []byte) (any, error)
	apply  func(a *applyCtx, cmd any) error
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
	register(t, cmdCommitRemote, "commit-remote", decodeCommitRemote, applyCommitRemote)
	register(t, cmdMoveBlobs, "move-blobs", decodeStrings, applyMoveBlobs)
	register(t, cmdForgetGarbage, "forget-garbage", decodeStrings, applyForgetGarbage)
	return t
}

func register[T any](t map[cmdType]handler, typ cmdType, name string, decode func([]byte) (T, error), apply func(*applyCtx, T) error) {
	if typ&skipUnknown != 0 {
		panic(fmt.Sprintf("fsm: command %s: type %#x uses the skip bit", name, uint8(typ)))
	}
	if prev, dup := t[typ]; dup {
		panic(fmt.Sprintf("fsm: command type %d registered for both %s and %s", typ, prev.name, name))
	}
	t[typ] = handler{
		name:   name,
		decode: func(b []byte) (any, error) { return decode(b) },
		apply:  func(a *applyCtx, cmd any) error { return apply(a, cmd.(T)) },
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

// dispatch applies one command log and returns its business error or an
// ioError.
func dispatch(a *applyCtx, l *raft.Log) error {
	h, cmd, err := decodeCommand(l.Data)
	if err != nil {
		panic(fmt.Errorf("fsm: cannot apply log %d: %w", l.Index, err))
	}
	if h == nil {
		slog.Warn("fsm: skipping unknown optional command; upgrade this replica", "index", l.Index, "type", l.Data[0])
		return nil
	}
	return h.apply(a, cmd)
}

// must panics on a write bbolt refused after the handler validated it: only
// a bug or a damaged file gets here, and carrying on would diverge.
func must(err error) {
	if err != nil {
		panic(fmt.Errorf("fsm: validated write failed: %w", err))
	}
}

func applyChunk(a *applyCtx, c chunkCmd) error {
	switch {
	case c.UploadID == "" || len(c.UploadID) > maxIDLen:
		return fmt.Errorf("chunk %d: upload id of %d bytes: %w", c.Seq, len(c.UploadID), ErrInvalidCommand)
	case len(c.Data) > storage.MaxChunkSize:
		return fmt.Errorf("chunk %d of upload %q: %d bytes exceeds %d: %w", c.Seq, c.UploadID, len(c.Data), storage.MaxChunkSize, ErrInvalidCommand)
	case checksum(c.Data) != c.crc:
		return fmt.Errorf("chunk %d of upload %q: %w", c.Seq, c.UploadID, ErrChunkChecksum)
	}
	id := []byte(c.UploadID)
	uploads := a.tx.Bucket(bucketUploads)
	up, started := getUpload(uploads, id)
	switch {
	case c.Seq == 0 && started:
		return fmt.Errorf("chunk 0 of upload %q: upload id already used: %w", c.UploadID, ErrChunkSequence)
	case c.Seq != 0 && !started:
		return fmt.Errorf("chunk %d of upload %q: %w", c.Seq, c.UploadID, ErrUnknownUpload)
	case c.Seq != 0 && c.Seq != up.Chunks:
		return fmt.Errorf("chunk %d of upload %q: want chunk %d: %w", c.Seq, c.UploadID, up.Chunks, ErrChunkSequence)
	}
	if c.Seq == 0 {
		up = uploadRecord{StartedAt: c.StartedAt}
	}
	// A replay (after a crash or a failed bbolt commit) writes the same
	// bytes at the same offset again.
	if err := a.writeChunk(c.UploadID, up.Bytes, c.Data); err != nil {
		return err
	}
	up.Chunks++
	up.Bytes += int64(len(c.Data))
	must(uploads.Put(id, up.encode()))
	a.f.hit(faultChunkWritten)
	return nil
}

func applyCommit(a *applyCtx, c commitCmd) error {
	art := c.Artifact
	if err := validArtifact(art); err != nil {
		return fmt.Errorf("commit of upload %q: %w", c.UploadID, err)
	}
	blobDigest := art.Blob()
	id := []byte(c.UploadID)
	uploads, blobs := a.tx.Bucket(bucketUploads), a.tx.Bucket(bucketBlobs)
	up, ok := getUpload(uploads, id)
	if !ok {
		return fmt.Errorf("commit of upload %q: %w", c.UploadID, ErrUnknownUpload)
	}
	if up.Chunks != c.Chunks || up.Bytes != art.Size {
		return fmt.Errorf("commit of upload %q: has %d chunks, %d bytes; commit says %d chunks, %d bytes: %w",
			c.UploadID, up.Chunks, up.Bytes, c.Chunks, art.Size, ErrIncompleteUpload)
	}
	digest := []byte(blobDigest)
	// Content already in the bucket (committed through --storage-backend=s3)
	// is referenced there; the upload's bytes are dropped.
	ref, stored := a.storedBlob(digest)
	if stored && ref.rec.Size != art.Size {
		return fmt.Errorf("commit of upload %q: %s is stored with %d bytes, not %d: %w",
			c.UploadID, blobDigest, ref.rec.Size, art.Size, storage.ErrDigestMismatch)
	}
	if !stored {
		if err := a.publish(c.UploadID, blobDigest, art.Size); err != nil {
			return fmt.Errorf("commit of upload %q: %w", c.UploadID, err)
		}
		ref = storedBlob{bucket: blobs}
	}

	// Reference the new blob before dereferencing the path's old one, so
	// recommitting the same content never drops it on the way.
	must(uploads.Delete(id))
	a.dropUploadFile(c.UploadID)
	a.reference(digest, ref, art.Size)
	a.putArtifact(art.Path(), c.raw, art.Size)
	return nil
}

// validArtifact checks what a commit names: only what any release
// accepted, since a replica replaying an old log must apply what its
// peers applied. The write paths check Flux's kinds and Kubernetes names
// (storage.ParseWritePath) before proposing.
func validArtifact(art storage.Artifact) error {
	if _, err := storage.ParsePath(art.Path()); err != nil {
		return err
	}
	// The blob is always addressed by sha256; an artifact digest of
	// another algorithm rides beside it. A commit without BlobDigest (all
	// of them before --artifact-digest-algo) applies exactly as before.
	if d := art.Blob(); !validDigest(d) {
		return fmt.Errorf("blob digest %q is not sha256 in hex: %w", d, ErrInvalidCommand)
	}
	if art.BlobDigest != "" && !validOtherDigest(art.Digest) {
		return fmt.Errorf("digest %q is not <algorithm>:<hex> of an algorithm other than sha256: %w", art.Digest, ErrInvalidCommand)
	}
	return nil
}

// putArtifact records the artifact at path, whose blob the caller has
// referenced already, releasing the blob of the artifact it replaces.
func (a *applyCtx) putArtifact(path string, raw []byte, size int64) {
	artifacts := a.tx.Bucket(bucketArtifacts)
	if old := artifacts.Get([]byte(path)); old != nil {
		ref := storedRef(path, old)
		a.release(ref.blob())
		a.cnt.ArtifactBytes -= ref.Size
	} else {
		a.cnt.Artifacts++
	}
	a.cnt.ArtifactBytes += size
	a.cntChanged = true
	must(artifacts.Put([]byte(path), raw))
	setCurrent(a.tx, []byte(path))
}

func applyDeleteArtifacts(a *applyCtx, paths []string) error {
	artifacts := a.tx.Bucket(bucketArtifacts)
	for _, p := range paths {
		old := artifacts.Get([]byte(p))
		if old == nil {
			continue
		}
		ref := storedRef(p, old)
		a.release(ref.blob())
		a.cnt.Artifacts--
		a.cnt.ArtifactBytes -= ref.Size
		a.cntChanged = true
		must(artifacts.Delete([]byte(p)))
		dropCurrent(a.tx, []byte(p))
	}
	return nil
}

func applyAbortUploads(a *applyCtx, ids []string) error {
	for _, id := range ids {
		a.dropUpload([]byte(id))
	}
	return nil
}

func applyExpireUploads(a *applyCtx, before int64) error {
	var expired [][]byte
	err := a.tx.Bucket(bucketUploads).ForEach(func(k, v []byte) error {
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
		a.dropUpload(id)
	}
	return nil
}

func applySetNode(a *applyCtx, n nodeCmd) error {
	if n.ID == "" || len(n.ID) > maxIDLen {
		return fmt.Errorf("set node: id of %d bytes: %w", len(n.ID), ErrInvalidCommand)
	}
	must(a.tx.Bucket(bucketNodes).Put([]byte(n.ID), n.raw))
	return nil
}

func applyRemoveNode(a *applyCtx, id string) error {
	nodes := a.tx.Bucket(bucketNodes)
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

// artifactRef is what the FSM itself needs of a stored artifact record.
type artifactRef struct {
	Digest     string `json:"digest"`
	BlobDigest string `json:"blobDigest"`
	Size       int64  `json:"size"`
}

// blob is the digest the record's blob is stored under, as storage.Artifact.Blob.
func (r artifactRef) blob() string {
	if r.BlobDigest != "" {
		return r.BlobDigest
	}
	return r.Digest
}

// storedRef reads the digests and size of an artifact record written by a
// commit, which validated it, so a failure means the file is damaged.
func storedRef(path string, v []byte) artifactRef {
	var a artifactRef
	if err := json.Unmarshal(v, &a); err != nil {
		must(fmt.Errorf("artifact %q: %v: %w", path, err, storage.ErrCorrupt))
	}
	return a
}
