package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// ErrClosed is returned by every method of a closed FSM, and by an FSM whose
// database could not be reopened after a restore.
var ErrClosed = errors.New("fsm: database is closed")

// initialMmapSize lets the database grow to 1 GiB before a writer has to
// remap, which waits for every read transaction, a snapshot's included.
const initialMmapSize = 1 << 30

// Options tune Open.
type Options struct {
	// NoSync skips fsync on commit: only for tests and benchmarks, a crash
	// can then lose or corrupt applied entries.
	NoSync bool
}

// FSM is the replicated state. Raft calls Apply, ApplyBatch, Snapshot and
// Restore from one goroutine; the read views may be called concurrently.
type FSM struct {
	path string
	dirs blobDirs
	opts Options

	// mu guards db against Close and Restore: every transaction runs under
	// the read lock, swapping or closing the file under the write lock.
	mu      sync.RWMutex
	db      *bolt.DB
	closed  bool
	closing chan struct{}

	applied atomic.Uint64

	changedMu sync.Mutex
	changed   chan struct{}

	errMu     sync.Mutex
	applyErr  error
	loggedErr string

	// filesMu orders the few writes to committed blob files that do not
	// come from apply (a repair's rename) and the content hash against
	// apply's unlinks. Taken inside f.mu's read lock, never around it.
	filesMu sync.Mutex
	blobs   blobState
	// arts holds the artifact records read since artifacts last changed.
	arts atomic.Pointer[artifactCache]

	// Retry backoff and fault hooks, replaced by tests.
	retryMin, retryMax time.Duration
	failCommit         func() error
	fault              func(point string)
}

// hit tells the test fault hook that apply reached point.
func (f *FSM) hit(point string) {
	if f.fault != nil {
		f.fault(point)
	}
}

// Open opens or creates the database at path and reads its applied index.
func Open(path string, opts Options) (*FSM, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("fsm: open %s: %w", path, err)
	}
	dirs := newBlobDirs(path)
	if err := dirs.create(); err != nil {
		return nil, fmt.Errorf("fsm: open %s: %w", path, err)
	}
	db, applied, err := openDB(path, dirs, opts)
	if err != nil {
		return nil, err
	}
	// A restore interrupted by a crash leaves its temporary file behind;
	// holding the database lock, nothing else can be restoring now.
	if stale, err := filepath.Glob(restorePattern(path)); err == nil {
		for _, name := range stale {
			_ = os.Remove(name)
		}
	}
	// So does a snapshot that was being persisted.
	if stale, err := filepath.Glob(filepath.Join(dirs.root, pinPrefix+"*")); err == nil {
		for _, name := range stale {
			_ = os.RemoveAll(name)
		}
	}
	f := &FSM{
		path:     path,
		dirs:     dirs,
		opts:     opts,
		db:       db,
		closing:  make(chan struct{}),
		changed:  make(chan struct{}),
		retryMin: 100 * time.Millisecond,
		retryMax: 5 * time.Second,
	}
	f.blobs.init()
	f.arts.Store(newArtifactCache())
	f.applied.Store(applied)
	return f, nil
}

func boltOptions(opts Options) *bolt.Options {
	return &bolt.Options{
		Timeout:         10 * time.Second,
		NoSync:          opts.NoSync,
		NoFreelistSync:  true, // rebuilt on open: commits stay small as the file grows
		FreelistType:    bolt.FreelistMapType,
		InitialMmapSize: initialMmapSize,
	}
}

// openDB opens the database, migrates a layout 2 file, and removes the
// files the database does not reference: those a crash left between a
// commit and its unlinks, and temporary files.
func openDB(path string, dirs blobDirs, opts Options) (*bolt.DB, uint64, error) {
	db, err := bolt.Open(path, 0o600, boltOptions(opts))
	if err != nil {
		return nil, 0, fmt.Errorf("fsm: open %s: %w", path, err)
	}
	var applied uint64
	err = func() error {
		var layout uint64
		err := db.Update(func(tx *bolt.Tx) error {
			for _, name := range allBuckets {
				if _, err := tx.CreateBucketIfNotExists(name); err != nil {
					return fmt.Errorf("create bucket %s: %w", name, err)
				}
			}
			if err := ensureCurrent(tx); err != nil {
				return err
			}
			var err error
			layout, err = readLayout(tx)
			return err
		})
		if err != nil {
			return err
		}
		if layout == layoutV2 {
			if err := migrateV2(db, dirs, opts.NoSync); err != nil {
				return fmt.Errorf("migrate layout 2: %w", err)
			}
			if db, err = compact(db, path, opts); err != nil {
				return fmt.Errorf("compact after migrating: %w", err)
			}
		}
		if err := sweep(db, dirs); err != nil {
			return fmt.Errorf("remove unreferenced files: %w", err)
		}
		return db.View(func(tx *bolt.Tx) error {
			var err error
			applied, err = readApplied(tx)
			return err
		})
	}()
	if err != nil {
		if db != nil {
			_ = db.Close()
		}
		return nil, 0, fmt.Errorf("fsm: open %s: %w", path, err)
	}
	return db, applied, nil
}

// compact rewrites the database without the pages the migrated chunks
// freed (bbolt never shrinks its file): into a new file beside it, which
// needs room for the metadata only, renamed over the old one.
func compact(db *bolt.DB, path string, opts Options) (*bolt.DB, error) {
	tmp := path + ".compact"
	_ = os.Remove(tmp)
	dst, err := bolt.Open(tmp, 0o600, &bolt.Options{NoSync: opts.NoSync, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return db, err
	}
	err = bolt.Compact(dst, db, 64<<20)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp)
		return db, err
	}
	if err := db.Close(); err != nil {
		return db, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, err
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	return bolt.Open(path, 0o600, boltOptions(opts))
}

// readLayout stamps a new file with layoutVersion and returns the layout
// of an existing one, refusing any it cannot read or migrate.
func readLayout(tx *bolt.Tx) (uint64, error) {
	meta := tx.Bucket(bucketMeta)
	v := meta.Get(keyLayout)
	if v == nil {
		return layoutVersion, meta.Put(keyLayout, uint64Value(layoutVersion))
	}
	if len(v) == 8 {
		if l := binary.BigEndian.Uint64(v); l == layoutVersion || l == layoutV2 {
			return l, nil
		}
	}
	return 0, fmt.Errorf("unsupported layout %x, want version %d", v, layoutVersion)
}

// Close closes the database; further calls do nothing. It stops an Apply
// that is retrying a failed commit, and waits for a snapshot being persisted.
func (f *FSM) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	close(f.closing)
	var err error
	if f.db != nil {
		err = f.db.Close()
		f.db = nil
	}
	// Lookups then reach the closed database and fail.
	f.arts.Store(newArtifactCache())
	f.mu.Unlock()
	f.broadcast() // waiters recheck and see ErrClosed
	if err != nil {
		return fmt.Errorf("fsm: close %s: %w", f.path, err)
	}
	return nil
}

// AppliedIndex is the index of the last log applied and stored.
func (f *FSM) AppliedIndex() uint64 { return f.applied.Load() }

// Changed returns a channel closed after the next applied batch, restore or
// Close. Callers waiting for some state select on it and then look again.
func (f *FSM) Changed() <-chan struct{} {
	f.changedMu.Lock()
	defer f.changedMu.Unlock()
	return f.changed
}

func (f *FSM) broadcast() {
	f.changedMu.Lock()
	close(f.changed)
	f.changed = make(chan struct{})
	f.changedMu.Unlock()
}

// Err returns the error that keeps the last batch from committing, nil once
// a commit succeeds.
func (f *FSM) Err() error {
	f.errMu.Lock()
	defer f.errMu.Unlock()
	return f.applyErr
}

func (f *FSM) setErr(err error) {
	f.errMu.Lock()
	defer f.errMu.Unlock()
	switch {
	case err != nil && err.Error() != f.loggedErr:
		slog.Warn("fsm: cannot commit applied logs, retrying", "err", err)
		f.loggedErr = err.Error()
	case err == nil && f.applyErr != nil:
		slog.Info("fsm: committing applied logs again")
		f.loggedErr = ""
	}
	f.applyErr = err
}

// Apply applies one log; see ApplyBatch.
func (f *FSM) Apply(l *raft.Log) interface{} {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch applies logs in one write transaction that also stores the
// last index. Logs at or below the stored index were applied before a
// restart and return nil; other log types only advance the index. A command
// log returns nil or its business error.
func (f *FSM) ApplyBatch(logs []*raft.Log) []interface{} {
	results := make([]interface{}, len(logs))
	applied := f.applied.Load()
	last := applied
	for _, l := range logs {
		last = max(last, l.Index)
	}
	if last == applied {
		return results
	}
	err := f.update(func(a *applyCtx) error {
		clear(results) // a retried transaction starts over
		for i, l := range logs {
			if l.Index <= applied || l.Type != raft.LogCommand {
				continue
			}
			if err := dispatch(a, l); err != nil {
				if isIOError(err) {
					return err
				}
				results[i] = err
			}
		}
		if err := a.finish(); err != nil {
			return err
		}
		return a.tx.Bucket(bucketMeta).Put(keyApplied, uint64Value(last))
	})
	if err != nil {
		for i, l := range logs {
			if l.Index > applied {
				results[i] = err
			}
		}
		return results
	}
	f.applied.Store(last)
	f.broadcast()
	return results
}

// update runs fn in a write transaction until it commits or the FSM closes,
// waiting between attempts with a doubling backoff, then removes the files
// the committed transaction released.
func (f *FSM) update(fn func(*applyCtx) error) error {
	delay := f.retryMin
	for {
		err := f.tryUpdate(fn)
		if err == nil {
			f.setErr(nil)
			return nil
		}
		if errors.Is(err, ErrClosed) {
			return err
		}
		f.setErr(err)
		select {
		case <-f.closing:
			return ErrClosed
		case <-time.After(delay):
		}
		delay = min(2*delay, f.retryMax)
	}
}

func (f *FSM) tryUpdate(fn func(*applyCtx) error) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.db == nil {
		return ErrClosed
	}
	var a *applyCtx
	err := f.db.Update(func(tx *bolt.Tx) error {
		var err error
		if a, err = f.newApplyCtx(tx); err != nil {
			return err
		}
		if err := fn(a); err != nil {
			return err
		}
		if f.failCommit != nil {
			return f.failCommit()
		}
		return nil
	})
	if a != nil {
		a.closeFiles()
	}
	if err != nil {
		return err
	}
	if a.cntChanged {
		// Before afterCommit unlinks the files of what changed, so no
		// cached record outlives its blob file.
		f.arts.Store(newArtifactCache())
	}
	a.afterCommit()
	return nil
}

// view runs fn in a short read transaction.
func (f *FSM) view(fn func(*bolt.Tx) error) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.db == nil {
		return ErrClosed
	}
	return f.db.View(fn)
}
