package raftstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/migrate"
)

// Log store kinds, the values of Config.LogStore and --raft-log-store.
const (
	// LogStoreWAL keeps the Raft log in hashicorp/raft-wal's append-only
	// segment files under raft/wal/.
	LogStoreWAL = "wal"
	// LogStoreBoltDB keeps the Raft log in raft.db beside the stable store,
	// as releases before the WAL did.
	LogStoreBoltDB = "boltdb"
)

const (
	walDir = "wal"
	// walTmpDir is where entries of raft.db are copied before the WAL
	// takes over; only its rename to walDir makes the copy count.
	walTmpDir = "wal.tmp"
	// walOldDir is a WAL whose entries were copied back into raft.db,
	// renamed away in one step before it is removed.
	walOldDir = "wal.old"
	// migrateBatchBytes groups copied entries into appends of about this size.
	migrateBatchBytes = 8 << 20
	minSegmentBytes   = 8 << 20
)

// walSegmentBytes sizes the WAL's segment files at a quarter of the
// snapshot trigger, between 8 MiB and raft-wal's 64 MiB default. The WAL
// frees disk only by deleting whole segments older than the compaction
// point, and preallocates the segment it writes: segments as large as
// the log kept between snapshots would keep nearly twice that on disk.
func walSegmentBytes(snapshotBytes int64) int {
	return int(min(max(snapshotBytes/4, minSegmentBytes), int64(wal.DefaultSegmentSize)))
}

// logStore is a Raft log that owns files to close.
type logStore interface {
	raft.LogStore
	io.Closer
}

// openLogStore returns the log store of the given kind in raftDir, moving
// the entries the other kind holds into it first, so that switching kinds
// (an upgrade from a release that kept the log in raft.db, or
// --raft-log-store=boltdb to go back) keeps every entry. stable is raft.db,
// which stays the stable store either way; in boltdb mode it is also the
// log and is returned as such.
//
// The WAL is authoritative whenever raft/wal exists: it appears only by a
// rename after a complete copy, and is removed only by a rename after its
// entries are in raft.db. Entries still in raft.db beside it are left over
// from a copy interrupted before they were deleted, and are dropped.
func openLogStore(raftDir, kind string, snapshotBytes int64, stable *raftboltdb.BoltStore, hlog hclog.Logger) (logStore, error) {
	openWAL := func(dir string) (*walLog, error) {
		l := &walLog{dir: dir, segmentBytes: walSegmentBytes(snapshotBytes), hlog: hlog.Named("wal")}
		if err := l.reopenLocked(); err != nil {
			return nil, err
		}
		return l, nil
	}
	for _, leftover := range []string{walTmpDir, walOldDir} {
		if err := os.RemoveAll(filepath.Join(raftDir, leftover)); err != nil {
			return nil, fmt.Errorf("remove interrupted log migration: %w", err)
		}
	}
	dir := filepath.Join(raftDir, walDir)
	_, err := os.Stat(dir)
	haveWAL := err == nil
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("raft wal dir: %w", err)
	}
	switch kind {
	case LogStoreWAL:
		if !haveWAL {
			if err := copyBoltIntoWAL(raftDir, stable, openWAL, hlog); err != nil {
				return nil, err
			}
		}
		w, err := openWAL(dir)
		if err != nil {
			return nil, err
		}
		if err := deleteAll(stable); err != nil {
			w.Close()
			return nil, fmt.Errorf("drop raft.db entries already in the wal: %w", err)
		}
		return w, nil
	case LogStoreBoltDB:
		if haveWAL {
			if err := copyWALIntoBolt(raftDir, stable, openWAL, hlog); err != nil {
				return nil, err
			}
		}
		return boltLog{stable}, nil
	default:
		return nil, fmt.Errorf("raft log store %q: want %s or %s", kind, LogStoreWAL, LogStoreBoltDB)
	}
}

// copyBoltIntoWAL moves raft.db's entries, if any, into a new WAL.
func copyBoltIntoWAL(raftDir string, stable *raftboltdb.BoltStore, openWAL func(string) (*walLog, error), hlog hclog.Logger) error {
	last, err := stable.LastIndex()
	if err != nil {
		return fmt.Errorf("raft.db last index: %w", err)
	}
	if last == 0 {
		return nil
	}
	tmp := filepath.Join(raftDir, walTmpDir)
	w, err := openWAL(tmp)
	if err != nil {
		return fmt.Errorf("create raft wal for migration: %w", err)
	}
	first, _ := stable.FirstIndex()
	hlog.Info("moving raft log entries from raft.db into the wal", "first", first, "last", last)
	if err := migrate.CopyLogs(context.Background(), w, stable, migrateBatchBytes, nil); err != nil {
		w.Close()
		return fmt.Errorf("copy raft.db entries into the wal: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("close migrated raft wal: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(raftDir, walDir)); err != nil {
		return fmt.Errorf("install migrated raft wal: %w", err)
	}
	return syncDir(raftDir)
}

// copyWALIntoBolt moves the WAL's entries into raft.db and removes the WAL.
func copyWALIntoBolt(raftDir string, stable *raftboltdb.BoltStore, openWAL func(string) (*walLog, error), hlog hclog.Logger) error {
	dir := filepath.Join(raftDir, walDir)
	w, err := openWAL(dir)
	if err != nil {
		return fmt.Errorf("open raft wal to move it into raft.db: %w", err)
	}
	defer w.Close()
	if err := deleteAll(stable); err != nil {
		return fmt.Errorf("drop raft.db entries of an interrupted copy: %w", err)
	}
	if last, err := w.LastIndex(); err != nil {
		return fmt.Errorf("raft wal last index: %w", err)
	} else if last > 0 {
		hlog.Info("moving raft log entries from the wal into raft.db", "last", last)
		if err := migrate.CopyLogs(context.Background(), stable, w, migrateBatchBytes, nil); err != nil {
			return fmt.Errorf("copy raft wal entries into raft.db: %w", err)
		}
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("close raft wal: %w", err)
	}
	old := filepath.Join(raftDir, walOldDir)
	if err := os.Rename(dir, old); err != nil {
		return fmt.Errorf("retire raft wal: %w", err)
	}
	if err := syncDir(raftDir); err != nil {
		return err
	}
	if err := os.RemoveAll(old); err != nil {
		return fmt.Errorf("remove retired raft wal: %w", err)
	}
	return nil
}

// deleteAll removes every log entry from s.
func deleteAll(s raft.LogStore) error {
	last, err := s.LastIndex()
	if err != nil || last == 0 {
		return err
	}
	first, err := s.FirstIndex()
	if err != nil {
		return err
	}
	return s.DeleteRange(first, last)
}

// syncDir makes renames in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open %s to sync: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// walLog is raft-wal as the node's log, reopened after a failed append: raft-wal cannot recover while open from a segment rotation that
// failed (a full disk), and every later append fails with "segment is
// sealed"; opening it again recovers the tail from its files, as after a
// crash. Raft retries the entries of a failed append.
type walLog struct {
	dir          string
	segmentBytes int
	hlog         hclog.Logger

	mu sync.RWMutex
	// w is nil after a reopen failed; the next append tries again.
	w       *wal.WAL
	openErr error
}

func (l *walLog) reopenLocked() error {
	if l.w != nil {
		l.w.Close()
		l.w = nil
	}
	if err := os.MkdirAll(l.dir, 0o750); err != nil {
		l.openErr = err
		return err
	}
	w, err := wal.Open(l.dir, wal.WithLogger(l.hlog), wal.WithSegmentSize(l.segmentBytes), wal.WithSegmentFiler(newReleasingFiler(l.dir)))
	if err != nil {
		l.openErr = fmt.Errorf("open raft wal: %w", err)
		return l.openErr
	}
	l.w, l.openErr = w, nil
	return nil
}

// read runs fn on the open WAL.
func (l *walLog) read(fn func(w *wal.WAL) error) error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.w == nil {
		return fmt.Errorf("raft wal is not open: %w", l.openErr)
	}
	return fn(l.w)
}

func (l *walLog) FirstIndex() (idx uint64, err error) {
	err = l.read(func(w *wal.WAL) error { idx, err = w.FirstIndex(); return err })
	return idx, err
}

func (l *walLog) LastIndex() (idx uint64, err error) {
	err = l.read(func(w *wal.WAL) error { idx, err = w.LastIndex(); return err })
	return idx, err
}

func (l *walLog) GetLog(index uint64, log *raft.Log) error {
	return l.read(func(w *wal.WAL) error { return w.GetLog(index, log) })
}

func (l *walLog) StoreLog(log *raft.Log) error { return l.StoreLogs([]*raft.Log{log}) }

func (l *walLog) StoreLogs(logs []*raft.Log) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w == nil {
		if err := l.reopenLocked(); err != nil {
			return err
		}
	}
	err := l.w.StoreLogs(logs)
	if err == nil {
		return nil
	}
	if rerr := l.reopenLocked(); rerr != nil {
		return fmt.Errorf("%w; reopening the raft wal: %w", err, rerr)
	}
	return err
}

func (l *walLog) DeleteRange(min, max uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w == nil {
		return fmt.Errorf("raft wal is not open: %w", l.openErr)
	}
	return l.w.DeleteRange(min, max)
}

func (l *walLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w == nil {
		return nil
	}
	err := l.w.Close()
	l.w = nil
	return err
}

// boltLog is raft.db as the log; the node closes raft.db as the stable
// store, so closing the log does nothing.
type boltLog struct{ *raftboltdb.BoltStore }

func (boltLog) Close() error { return nil }
