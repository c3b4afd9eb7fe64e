package fsm

import (
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
)

// sweep removes the files no record references: upload files of uploads
// committed or aborted just before a crash, blob files whose last
// reference went just before a crash, and temporary files. It runs on
// Open, holding the database's lock, so apply is not running; a pending
// commit's replay needs only its upload file, which its record keeps.
func sweep(db *bolt.DB, dirs blobDirs) error {
	uploads := map[string]bool{}
	blobs := map[string]bool{}
	err := db.View(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketUploads).ForEach(func(k, _ []byte) error {
			uploads[filepath.Base(dirs.upload(string(k)))] = true
			return nil
		}); err != nil {
			return err
		}
		return tx.Bucket(bucketBlobs).ForEach(func(k, _ []byte) error {
			blobs[filepath.Base(dirs.blob(string(k)))] = true
			return nil
		})
	})
	if err != nil {
		return err
	}
	for _, d := range []struct {
		dir  string
		keep map[string]bool
	}{{dirs.uploads, uploads}, {dirs.sha256, blobs}, {dirs.tmp, nil}} {
		entries, err := os.ReadDir(d.dir)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if !d.keep[e.Name()] {
				if err := os.Remove(filepath.Join(d.dir, e.Name())); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
