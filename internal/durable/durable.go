// Package durable holds what makes a file system change survive a crash
// beyond the file's own fsync: a file created, renamed or removed is only
// durable once the directory holding its entry is synced too.
package durable

import (
	"fmt"
	"os"
)

// SyncDir fsyncs directory dir, so the entries created, renamed or
// removed in it since are on disk.
func SyncDir(dir string) error {
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
