package fsm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/sourceraft/sourceraft/storage"
	bolt "go.etcd.io/bbolt"
)

// Fault points: a test hook (FSM.fault) sees each as apply passes it, so a
// test can stop the process right there and check that a restart replays
// the log to the same state.
const (
	faultChunkWritten  = "chunk-written"         // a chunk is in its upload file, bbolt not committed
	faultBeforeLink    = "commit-before-link"    // upload file verified and synced, no blob file yet
	faultAfterLink     = "commit-after-link"     // blob file in place, bbolt not committed
	faultAfterCommit   = "commit-after-bbolt"    // bbolt committed, upload and unreferenced blob files not removed yet
	faultAfterCleanup  = "commit-after-unlink"   // everything done
	faultBeforeRelease = "release-before-unlink" // upload files removed, released blob files not yet
)

// applyCtx is one attempt at applying a batch: the write transaction, the
// upload files it wrote (synced before bbolt commits, so the database never
// records a chunk the disk does not hold) and the files to remove once the
// transaction is durable. A failed attempt is rolled back and run again
// from the start; every file effect before the commit is idempotent.
type applyCtx struct {
	f          *FSM
	tx         *bolt.Tx
	cnt        counters
	cntChanged bool

	open          map[string]*os.File // upload file by upload id
	unlinkUploads []string
	unlinkBlobs   []string
}

func (f *FSM) newApplyCtx(tx *bolt.Tx) (*applyCtx, error) {
	cnt, err := readCounters(tx)
	if err != nil {
		return nil, err
	}
	return &applyCtx{f: f, tx: tx, cnt: cnt, open: map[string]*os.File{}}, nil
}

// uploadFile opens an upload's file for writing, creating it for chunk 0.
func (a *applyCtx) uploadFile(id string) (*os.File, error) {
	if fh, ok := a.open[id]; ok {
		return fh, nil
	}
	fh, err := os.OpenFile(a.f.dirs.upload(id), os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return nil, ioErr("open upload file of %q: %w", id, err)
	}
	a.open[id] = fh
	return fh, nil
}

// writeChunk writes data at off in the upload's file.
func (a *applyCtx) writeChunk(id string, off int64, data []byte) error {
	fh, err := a.uploadFile(id)
	if err != nil {
		return err
	}
	if _, err := fh.WriteAt(data, off); err != nil {
		return ioErr("write chunk of upload %q at %d: %w", id, off, err)
	}
	return nil
}

// publish makes an upload's file the blob file of digest: it checks the
// content hashes to digest, syncs it and links it to its content address.
// A link, not a rename: the upload file stays until the transaction that
// records the blob is durable, so a replay after a crash anywhere in
// between finds the bytes it needs, and Open can remove any blob file
// without a record. A blob file already there was verified before it was
// linked (content address, never written again) and is kept.
//
// A mismatch is the command's business error: the chunks passed their
// checksums, so every replica holds the same bytes and fails the same way.
func (a *applyCtx) publish(id, digest string, size int64) error {
	dst := a.f.dirs.blob(digest)
	src := a.f.dirs.upload(id)
	fh, err := os.OpenFile(src, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		// Only an upload whose file was lost, e.g. with a volume: keep
		// retrying (and say so) rather than diverge.
		if _, serr := os.Stat(dst); serr == nil {
			return nil
		}
		return ioErr("upload file %s is missing: %w", src, err)
	}
	if err != nil {
		return ioErr("open upload file: %w", err)
	}
	defer fh.Close()
	// A replayed upload can find bytes of an earlier attempt past its end.
	if err := fh.Truncate(size); err != nil {
		return ioErr("truncate upload file: %w", err)
	}
	got, n, err := fileDigest(src)
	if err != nil {
		return ioErr("hash upload file: %w", err)
	}
	if got != digest || n != size {
		return fmt.Errorf("content of %d bytes hashes to %s, commit says %s: %w", n, got, digest, storage.ErrDigestMismatch)
	}
	if !a.f.opts.NoSync {
		if err := fh.Sync(); err != nil {
			return ioErr("sync upload file: %w", err)
		}
	}
	a.f.hit(faultBeforeLink)
	if err := os.Link(src, dst); err != nil && !errors.Is(err, fs.ErrExist) {
		return ioErr("link blob file: %w", err)
	}
	if !a.f.opts.NoSync {
		if err := syncDir(a.f.dirs.sha256); err != nil {
			return ioErr("sync blob directory: %w", err)
		}
	}
	a.f.hit(faultAfterLink)
	return nil
}

// dropUploadFile removes an upload's file once the transaction commits.
func (a *applyCtx) dropUploadFile(id string) {
	a.unlinkUploads = append(a.unlinkUploads, id)
}

// dropUpload removes an uncommitted upload and its file. A committed upload
// has no record, so its content, now a blob's, is never touched.
func (a *applyCtx) dropUpload(id []byte) {
	uploads := a.tx.Bucket(bucketUploads)
	if uploads.Get(id) == nil {
		return
	}
	must(uploads.Delete(id))
	a.dropUploadFile(string(id))
}

// release drops one reference to a blob; with the last one the record goes
// now, and the file once the transaction is durable (a blob in the bucket
// is recorded as garbage for the leader to delete).
func (a *applyCtx) release(digest string) {
	ref, ok := a.storedBlob([]byte(digest))
	if !ok {
		return
	}
	if ref.rec.Refs > 1 {
		ref.rec.Refs--
		must(ref.bucket.Put([]byte(digest), ref.rec.encode()))
		return
	}
	must(ref.bucket.Delete([]byte(digest)))
	a.cnt.Blobs--
	a.cnt.BlobBytes -= ref.rec.Size
	a.cntChanged = true
	if ref.remote {
		a.addGarbage([]byte(digest))
		return
	}
	a.unlinkBlobs = append(a.unlinkBlobs, digest)
}

// reference adds one reference to the blob digest found at ref (a new
// local blob of size when ref has no record yet).
func (a *applyCtx) reference(digest []byte, ref storedBlob, size int64) {
	if ref.rec.Refs == 0 {
		ref.rec = blobRecord{Size: size}
		a.cnt.Blobs++
		a.cnt.BlobBytes += size
		a.cntChanged = true
	}
	ref.rec.Refs++
	must(ref.bucket.Put(digest, ref.rec.encode()))
}

// finish runs last in the transaction: it syncs the upload files written
// and stores the counters. Blob files released and then committed again in
// the same batch keep their file.
func (a *applyCtx) finish() error {
	for id, fh := range a.open {
		if !a.f.opts.NoSync {
			if err := fh.Sync(); err != nil {
				return ioErr("sync upload file of %q: %w", id, err)
			}
		}
	}
	if a.cntChanged {
		must(a.tx.Bucket(bucketMeta).Put(keyCounters, a.cnt.encode()))
	}
	blobs := a.tx.Bucket(bucketBlobs)
	kept := a.unlinkBlobs[:0]
	for _, d := range a.unlinkBlobs {
		if blobs.Get([]byte(d)) == nil {
			kept = append(kept, d)
		}
	}
	a.unlinkBlobs = kept
	return nil
}

// closeFiles closes the upload files, whether the attempt committed or not.
func (a *applyCtx) closeFiles() {
	for _, fh := range a.open {
		_ = fh.Close()
	}
	clear(a.open)
}

// afterCommit removes the files the committed transaction no longer
// references. A crash before it leaves files Open removes.
func (a *applyCtx) afterCommit() {
	a.f.hit(faultAfterCommit)
	for _, id := range a.unlinkUploads {
		_ = os.Remove(a.f.dirs.upload(id))
	}
	if len(a.unlinkBlobs) > 0 {
		a.f.hit(faultBeforeRelease)
		a.f.filesMu.Lock()
		for _, d := range a.unlinkBlobs {
			_ = os.Remove(a.f.dirs.blob(d))
			a.f.forget(d)
		}
		a.f.filesMu.Unlock()
	}
	a.f.hit(faultAfterCleanup)
}
