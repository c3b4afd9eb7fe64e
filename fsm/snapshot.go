package fsm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// Snapshot captures the applied state in a read transaction; Persist
// streams the database file from it while applying goes on.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.db == nil {
		return nil, ErrClosed
	}
	tx, err := f.db.Begin(false)
	if err != nil {
		return nil, fmt.Errorf("fsm: snapshot: %w", err)
	}
	return &snapshot{tx: tx}, nil
}

type snapshot struct {
	tx   *bolt.Tx
	once sync.Once
}

// Persist writes the database as of the snapshot to sink.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	defer s.Release()
	if _, err := s.tx.WriteTo(sink); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("fsm: persist snapshot: %w", err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("fsm: persist snapshot: %w", err)
	}
	return nil
}

// Release ends the snapshot's read transaction, letting bbolt reuse the
// pages it pinned.
func (s *snapshot) Release() {
	s.once.Do(func() { _ = s.tx.Rollback() })
}

// Restore replaces the whole state with a snapshot written by Persist.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	tmp, err := f.receive(rc)
	if err != nil {
		return fmt.Errorf("fsm: restore: %w", err)
	}
	defer os.Remove(tmp) // gone already once renamed

	err = f.swap(tmp)
	f.broadcast()
	if err != nil {
		return fmt.Errorf("fsm: restore: %w", err)
	}
	return nil
}

// receive streams a snapshot into a synced temporary file next to the
// database and checks it is one.
func (f *FSM) receive(r io.Reader) (string, error) {
	tmp, err := os.CreateTemp(filepath.Dir(f.path), filepath.Base(restorePattern(f.path)))
	if err != nil {
		return "", err
	}
	_, err = io.Copy(tmp, r)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = checkSnapshot(tmp.Name())
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		return "", err
	}
	return tmp.Name(), nil
}

func restorePattern(path string) string { return path + ".restore-*" }

func checkSnapshot(path string) error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("snapshot is not a database: %w", err)
	}
	defer db.Close()
	return db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketMeta) == nil {
			return errors.New("snapshot has no meta bucket")
		}
		if v := tx.Bucket(bucketMeta).Get(keyLayout); string(v) != string(uint64Value(layoutVersion)) {
			return fmt.Errorf("snapshot has layout %x, want version %d", v, layoutVersion)
		}
		_, err := readApplied(tx)
		return err
	})
}

// swap closes the live database, renames tmp over it and reopens it. If the
// rename fails the old database is reopened.
func (f *FSM) swap(tmp string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	if f.db != nil {
		if err := f.db.Close(); err != nil {
			return err
		}
		f.db = nil
	}
	renameErr := os.Rename(tmp, f.path)
	if renameErr == nil {
		if err := syncDir(filepath.Dir(f.path)); err != nil {
			// The rename is done; a crash may undo it, and Raft restores
			// its latest snapshot on start anyway.
			slog.Warn("fsm: restore: sync directory", "err", err)
		}
	}
	db, applied, err := openDB(f.path, f.opts)
	if err != nil {
		return errors.Join(renameErr, err)
	}
	f.db = db
	f.applied.Store(applied)
	return renameErr
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
