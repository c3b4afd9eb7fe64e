package raftstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sourceraft/sourceraft/fsm"
	"github.com/sourceraft/sourceraft/storage"
)

// BlobStore is an object store blob bytes rest in (--storage-backend=s3),
// each under its sha256 content address; s3store.Store implements it.
// With one, the leader writes a blob there before it proposes the commit,
// and the log carries only the record (fsm's remote blobs).
type BlobStore interface {
	Put(ctx context.Context, digest string, size int64, r io.ReaderAt) error
	Delete(ctx context.Context, digest string) error
	// Open returns a file holding the blob's bytes, verified against the
	// digest (through a local cache).
	Open(ctx context.Context, digest string, size int64) (*os.File, error)
	Presign(ctx context.Context, digest string, ttl time.Duration) (*url.URL, error)
	// Check reports whether the store is reachable with our credentials.
	Check(ctx context.Context) error
	Walk(ctx context.Context, fn func(digest string, size int64, modified time.Time) error) error
	SweepIncomplete(ctx context.Context, olderThan time.Duration) (int, error)
}

// ErrNoBlobStore is returned for a blob in the object store on a replica
// started without one.
var ErrNoBlobStore = errors.New("blob rests in the object store, and this replica runs --storage-backend=raft")

// blobStoreCheckInterval is how often readiness asks the object store.
const blobStoreCheckInterval = 5 * time.Second

// blobGuard keeps the leader from deleting an object it is writing: Store
// and the migration hold a digest from before their Put until their
// command is applied, and the sweeps delete only digests nobody holds,
// deciding and deleting under the same lock.
type blobGuard struct {
	mu   sync.Mutex
	busy map[string]int
}

func (g *blobGuard) hold(digest string) (release func()) {
	g.mu.Lock()
	if g.busy == nil {
		g.busy = map[string]int{}
	}
	g.busy[digest]++
	g.mu.Unlock()
	return func() {
		g.mu.Lock()
		if g.busy[digest]--; g.busy[digest] == 0 {
			delete(g.busy, digest)
		}
		g.mu.Unlock()
	}
}

// ifIdle runs fn unless digest is held, and reports whether it ran.
func (g *blobGuard) ifIdle(digest string, fn func() error) (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.busy[digest] > 0 {
		return false, nil
	}
	return true, fn()
}

// storeRemote spools content to a local file while hashing it, writes it
// to the object store under its digest and commits the record. The spool
// keeps the leader's memory bounded whatever the size and lets the store
// client retry parts; a blob already in the store is not written again.
func (n *Node) storeRemote(ctx context.Context, r *raft.Raft, a *storage.Artifact, content io.Reader, sums contentDigests) error {
	err := func() error {
		spool, size, err := n.spool(content, sums)
		if err != nil {
			return err
		}
		defer os.Remove(spool.Name())
		defer spool.Close()
		stored, err := n.described(*a, size, sums)
		if err != nil {
			return err
		}
		digest := stored.Blob()
		defer n.guard.hold(digest)()
		if n.fsm.BlobPlace(digest) != fsm.Remote {
			if err := n.cfg.Blobs.Put(ctx, digest, size, spool); err != nil {
				return fmt.Errorf("write blob to the object store: %w", err)
			}
		}
		if err := n.propose(ctx, r, fsm.EncodeCommitRemote(fsm.RemoteCommit{Artifact: stored})); err != nil {
			return err
		}
		*a = stored
		return nil
	}()
	if err != nil {
		n.aborted(a, "", err)
		return fmt.Errorf("store %s: %w", a.Path(), err)
	}
	return nil
}

// spool copies content into a new file under Dir/spool, hashing it, and
// returns the file and its size. Only a clean end of content ends it
// (readChunk), and MaxArtifactSize bounds it.
func (n *Node) spool(content io.Reader, sums io.Writer) (*os.File, int64, error) {
	dir := filepath.Join(n.cfg.Dir, spoolDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, 0, fmt.Errorf("spool directory: %w", err)
	}
	fh, err := os.CreateTemp(dir, "upload-")
	if err != nil {
		return nil, 0, fmt.Errorf("spool file: %w", err)
	}
	bufp := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(bufp)
	var size int64
	for {
		k, end, err := readChunk(content, *bufp)
		if err == nil {
			size += int64(k)
			if n.cfg.MaxArtifactSize > 0 && size > n.cfg.MaxArtifactSize {
				err = fmt.Errorf("%w (%d bytes)", storage.ErrTooLarge, n.cfg.MaxArtifactSize)
			}
		}
		if err == nil {
			_, _ = sums.Write((*bufp)[:k])
			if _, werr := fh.Write((*bufp)[:k]); werr != nil {
				err = fmt.Errorf("spool file: %w", werr)
			}
		}
		if err != nil {
			fh.Close()
			os.Remove(fh.Name())
			return nil, 0, err
		}
		if end {
			return fh, size, nil
		}
	}
}

// spoolDir under Dir holds the leader's uploads to the object store while
// they are hashed and written; what a crash leaves there is removed at Open.
const spoolDir = "spool"

// OpenRemote gives content whose blob rests in the object store its bytes:
// a pre-signed URL to redirect the download to (Presign), or a verified
// file from the local cache attached to c.
func (n *Node) OpenRemote(ctx context.Context, c *fsm.Content) (redirect string, err error) {
	if n.cfg.Blobs == nil {
		return "", fmt.Errorf("%s: %w", c.Artifact.Blob(), ErrNoBlobStore)
	}
	if n.cfg.Presign > 0 {
		u, err := n.cfg.Blobs.Presign(ctx, c.Artifact.Blob(), n.cfg.Presign)
		if err != nil {
			return "", fmt.Errorf("presign %s: %w", c.Artifact.Blob(), err)
		}
		return u.String(), nil
	}
	return "", n.attachRemote(ctx, c)
}

func (n *Node) attachRemote(ctx context.Context, c *fsm.Content) error {
	if n.cfg.Blobs == nil {
		return fmt.Errorf("%s: %w", c.Artifact.Blob(), ErrNoBlobStore)
	}
	fh, err := n.cfg.Blobs.Open(ctx, c.Artifact.Blob(), c.Artifact.Size)
	if err != nil {
		return fmt.Errorf("read %s from the object store: %w", c.Artifact.Path(), err)
	}
	return c.Attach(fh)
}

// checkBlobStore asks the object store every blobStoreCheckInterval and
// keeps the answer for Ready, which must not wait on the network.
func (n *Node) checkBlobStore() {
	defer n.wg.Done()
	t := time.NewTicker(blobStoreCheckInterval)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), blobStoreCheckInterval)
		err := n.cfg.Blobs.Check(ctx)
		cancel()
		n.blobStoreErr.Store(&err)
		select {
		case <-n.done:
			return
		case <-t.C:
		}
	}
}

// blobStoreHealth is the last answer of checkBlobStore; nil without an
// object store or before the first answer.
func (n *Node) blobStoreHealth() error {
	if p := n.blobStoreErr.Load(); p != nil && *p != nil {
		return fmt.Errorf("object store: %w", *p)
	}
	return nil
}

// SweepBlobStore runs the leader's object store duties once: it deletes
// the objects released artifacts left (collected garbage), moves blobs
// still held as files into the store (a cluster that switched backends),
// and deletes objects and multipart uploads no commit will ever name,
// those older than UploadTTL, or all of them when orphans is set (on
// gaining leadership, after the barrier: no earlier leader can commit
// any more, and this one holds what it is writing).
func (n *Node) SweepBlobStore(ctx context.Context, orphans bool) error {
	if n.cfg.Blobs == nil {
		return nil
	}
	r, err := n.leaderRaft()
	if err != nil {
		return err
	}
	return errors.Join(n.collectBlobGarbage(ctx, r), n.migrateBlobs(ctx, r), n.sweepOrphanBlobs(ctx, orphans))
}

// garbageBatch bounds one forget-garbage or move-blobs command.
const garbageBatch = 256

// collectBlobGarbage deletes the objects of released blobs, then proposes
// forgetting them: an object goes only after the delete that released it
// committed, and the record stays until the object is gone.
func (n *Node) collectBlobGarbage(ctx context.Context, r *raft.Raft) error {
	for {
		digests, err := n.fsm.GarbageBlobs(garbageBatch)
		if err != nil || len(digests) == 0 {
			return err
		}
		var gone []string
		var failed error
		for _, d := range digests {
			ran, err := n.guard.ifIdle(d, func() error {
				// Committed again (or kept as a file) since: only the
				// garbage record goes.
				if n.fsm.BlobPlace(d) != fsm.Garbage {
					return nil
				}
				return n.cfg.Blobs.Delete(ctx, d)
			})
			if err != nil {
				failed = fmt.Errorf("delete %s from the object store: %w", d, err)
				break
			}
			if ran {
				gone = append(gone, d)
			}
		}
		if len(gone) > 0 {
			if err := n.propose(ctx, r, fsm.EncodeForgetGarbage(gone)); err != nil {
				return errors.Join(failed, fmt.Errorf("forget deleted blobs: %w", err))
			}
			n.log.Info("deleted released blobs from the object store", "count", len(gone))
		}
		if failed != nil || len(digests) < garbageBatch || len(gone) == 0 {
			return failed
		}
	}
}

// migrateBlobs copies every blob still held as a file to the object store
// and proposes the move, a batch at a time: replicas drop their files once
// it commits, and serve the blob from the store after. A restart resumes
// with the blobs not moved yet. A file that does not verify is left for
// repair from a peer.
func (n *Node) migrateBlobs(ctx context.Context, r *raft.Raft) error {
	var (
		batch []string
		moved int
		after string
	)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := n.propose(ctx, r, fsm.EncodeMoveBlobs(batch)); err != nil {
			return fmt.Errorf("move blobs to the object store: %w", err)
		}
		moved += len(batch)
		batch = batch[:0]
		return nil
	}
	defer func() {
		if moved > 0 {
			n.log.Info("moved blobs to the object store", "count", moved)
		}
	}()
	for {
		digest, size, ok, err := n.fsm.NextBlob(after)
		if err != nil {
			return err
		}
		if !ok {
			return flush()
		}
		after = digest
		copied, err := n.copyToBlobStore(ctx, digest, size)
		if err != nil {
			return errors.Join(fmt.Errorf("copy %s to the object store: %w", digest, err), flush())
		}
		if copied {
			if batch = append(batch, digest); len(batch) == garbageBatch {
				if err := flush(); err != nil {
					return err
				}
			}
		}
	}
}

func (n *Node) copyToBlobStore(ctx context.Context, digest string, size int64) (bool, error) {
	if err := n.fsm.Verify(digest); errors.Is(err, storage.ErrNotFound) || errors.Is(err, storage.ErrCorrupt) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	fh, err := n.fsm.OpenBlobFile(digest)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil // released since
	}
	if err != nil {
		return false, err
	}
	defer fh.Close()
	return true, n.cfg.Blobs.Put(ctx, digest, size, fh)
}

// sweepOrphanBlobs deletes the objects and incomplete multipart uploads no
// record names: a leader that died between its Put and its commit leaves
// them.
func (n *Node) sweepOrphanBlobs(ctx context.Context, all bool) error {
	age := n.cfg.UploadTTL
	if all {
		age = 0
	}
	aborted, err := n.cfg.Blobs.SweepIncomplete(ctx, age)
	if err != nil {
		return fmt.Errorf("sweep incomplete uploads: %w", err)
	}
	cutoff := time.Now().Add(-age)
	deleted := 0
	err = n.cfg.Blobs.Walk(ctx, func(digest string, _ int64, modified time.Time) error {
		if modified.After(cutoff) {
			return nil
		}
		ran, err := n.guard.ifIdle(digest, func() error {
			if n.fsm.BlobPlace(digest) != fsm.Unknown {
				return errSkip
			}
			return n.cfg.Blobs.Delete(ctx, digest)
		})
		switch {
		case errors.Is(err, errSkip):
			return nil
		case err != nil:
			return fmt.Errorf("delete orphan %s: %w", digest, err)
		case ran:
			deleted++
		}
		return nil
	})
	if aborted+deleted > 0 {
		n.log.Info("swept the object store of uploads nothing committed", "objects", deleted, "multipartUploads", aborted)
	}
	if err != nil {
		return fmt.Errorf("sweep orphan objects: %w", err)
	}
	return nil
}

// errSkip tells a sweep an object is not its to delete.
var errSkip = errors.New("skip")
