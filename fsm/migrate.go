package fsm

import (
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/sourceraft/sourceraft/storage"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// migrateV2 turns a layout 2 file (blob bytes in the chunks bucket) into
// layout 3 in place, one blob at a time: its file is written from the
// chunks (each checked against its checksum), verified against the digest,
// synced and renamed into place; then one transaction drops its chunks and
// rewrites its record, and the chunks' disk blocks are given back, so the
// migration needs room for one more blob, not a second store. A crash anywhere leaves records of either layout,
// and the next Open goes on from the first blob still in layout 2 (its file
// is simply written again). Uploads not committed yet get their files the
// same way; the counters are computed once, and the layout is stamped last.
func migrateV2(db *bolt.DB, dirs blobDirs, noSync bool) error {
	var migrated int
	for {
		digest, rec, ok, err := nextV2Blob(db)
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		if err := migrateBlob(db, dirs, digest, rec, noSync); err != nil {
			return fmt.Errorf("blob %s: %w", digest, err)
		}
		migrated++
	}
	uploads, err := v2Uploads(db)
	if err != nil {
		return err
	}
	for _, id := range uploads {
		if err := migrateUpload(db, dirs, id, noSync); err != nil {
			return fmt.Errorf("upload %q: %w", id, err)
		}
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketChunks) != nil {
			if err := tx.DeleteBucket(bucketChunks); err != nil {
				return err
			}
		}
		var c counters
		err := tx.Bucket(bucketArtifacts).ForEach(func(k, v []byte) error {
			c.Artifacts++
			c.ArtifactBytes += storedRef(string(k), v).Size
			return nil
		})
		if err != nil {
			return err
		}
		err = tx.Bucket(bucketBlobs).ForEach(func(k, v []byte) error {
			r, err := decodeBlobRecord(v)
			if err != nil {
				return fmt.Errorf("blob %s: %w", k, err)
			}
			c.Blobs++
			c.BlobBytes += r.Size
			return nil
		})
		if err != nil {
			return err
		}
		meta := tx.Bucket(bucketMeta)
		if err := meta.Put(keyCounters, c.encode()); err != nil {
			return err
		}
		return meta.Put(keyLayout, uint64Value(layoutVersion))
	})
	if err != nil {
		return err
	}
	slog.Info("fsm: migrated the store to layout 3", "blobs", migrated, "uploads", len(uploads))
	return nil
}

// v2BlobRecord is layout 2's blob record: size(8) chunks(4) refs(4) upload-id.
type v2BlobRecord struct {
	Size   int64
	Chunks uint32
	Refs   uint32
	Upload string
}

func decodeV2BlobRecord(v []byte) (v2BlobRecord, bool) {
	if len(v) <= 16 {
		return v2BlobRecord{}, false
	}
	return v2BlobRecord{
		Size:   int64(binary.BigEndian.Uint64(v)),
		Chunks: binary.BigEndian.Uint32(v[8:]),
		Refs:   binary.BigEndian.Uint32(v[12:]),
		Upload: string(v[16:]),
	}, true
}

func nextV2Blob(db *bolt.DB) (string, v2BlobRecord, bool, error) {
	var (
		digest string
		rec    v2BlobRecord
		found  bool
	)
	err := db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketBlobs).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if r, ok := decodeV2BlobRecord(v); ok {
				digest, rec, found = string(k), r, true
				return nil
			}
		}
		return nil
	})
	return digest, rec, found, err
}

// writeChunks streams an upload's chunks, each verified, to w.
func writeChunks(tx *bolt.Tx, upload string, chunks uint32, w io.Writer) (int64, error) {
	b := tx.Bucket(bucketChunks)
	if b != nil {
		b = b.Bucket([]byte(upload))
	}
	if b == nil {
		return 0, fmt.Errorf("no chunks for upload %q: %w", upload, storage.ErrCorrupt)
	}
	var n int64
	for seq := uint32(0); seq < chunks; seq++ {
		v := getChunk(b, seq)
		if len(v) < 4 || checksum(v[4:]) != binary.BigEndian.Uint32(v) {
			return n, fmt.Errorf("chunk %d of upload %q fails its checksum: %w", seq, upload, storage.ErrCorrupt)
		}
		k, err := w.Write(v[4:])
		n += int64(k)
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func migrateBlob(db *bolt.DB, dirs blobDirs, digest string, rec v2BlobRecord, noSync bool) error {
	if !validDigest(digest) {
		return fmt.Errorf("not a sha256 digest: %w", storage.ErrCorrupt)
	}
	pr, pw := io.Pipe()
	go func() {
		err := db.View(func(tx *bolt.Tx) error {
			_, err := writeChunks(tx, rec.Upload, rec.Chunks, pw)
			return err
		})
		pw.CloseWithError(err)
	}()
	err := dirs.writeVerified(digest, rec.Size, pr, noSync)
	pr.CloseWithError(err) // lets the writer stop if verification ended early
	if err != nil {
		return err
	}
	var pages []pageRange
	err = db.Update(func(tx *bolt.Tx) error {
		if chunks := tx.Bucket(bucketChunks); chunks != nil && chunks.Bucket([]byte(rec.Upload)) != nil {
			pages = chunkPages(tx, chunks.Bucket([]byte(rec.Upload)))
			if err := chunks.DeleteBucket([]byte(rec.Upload)); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketBlobs).Put([]byte(digest), blobRecord{Size: rec.Size, Refs: rec.Refs}.encode())
	})
	if err != nil {
		return err
	}
	releasePages(db, pages)
	return nil
}

// pageRange is a run of database pages: a chunk's leaf and its overflow.
type pageRange struct{ start, n uint64 }

// chunkPages lists the pages holding an upload's chunks.
func chunkPages(tx *bolt.Tx, upload *bolt.Bucket) []pageRange {
	var out []pageRange
	_ = upload.ForEach(func(k, v []byte) error {
		if v != nil {
			return nil
		}
		root := upload.Bucket(k).Root()
		if root == 0 {
			return nil // inline in its parent's page
		}
		if info, err := tx.Page(int(root)); err == nil && info != nil {
			out = append(out, pageRange{start: uint64(root), n: uint64(info.OverflowCount) + 1})
		}
		return nil
	})
	return out
}

// releasePages gives the disk blocks of freed pages back to the file
// system (a hole punched where they were), so that a migration needs room
// for one blob file at a time rather than for the whole store again: bbolt
// keeps freed pages in its file and never shrinks it. Nothing reads a free
// page, and bbolt writes a page whole before it uses it again, so a hole
// reads as the zeros nobody looks at. Best effort: the compaction at the
// end of the migration reclaims the space anyway.
func releasePages(db *bolt.DB, pages []pageRange) {
	if len(pages) == 0 {
		return
	}
	fh, err := os.OpenFile(db.Path(), os.O_WRONLY, 0)
	if err != nil {
		return
	}
	defer fh.Close()
	size := uint64(db.Info().PageSize)
	_ = db.View(func(tx *bolt.Tx) error {
		for _, p := range pages {
			if info, err := tx.Page(int(p.start)); err != nil || info == nil || info.Type != "free" {
				continue
			}
			if err := unix.Fallocate(int(fh.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(p.start*size), int64(p.n*size)); err != nil {
				return err // not supported here: leave it to the compaction
			}
		}
		return nil
	})
}

func v2Uploads(db *bolt.DB) ([]string, error) {
	var ids []string
	err := db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketUploads).ForEach(func(k, _ []byte) error {
			ids = append(ids, string(k))
			return nil
		})
	})
	return ids, err
}

// migrateUpload writes an uncommitted upload's chunks to its file; the
// chunks go with the bucket at the end.
func migrateUpload(db *bolt.DB, dirs blobDirs, id string, noSync bool) error {
	return db.View(func(tx *bolt.Tx) error {
		up, ok := getUpload(tx.Bucket(bucketUploads), []byte(id))
		if !ok {
			return nil
		}
		fh, err := os.CreateTemp(dirs.tmp, "upload-*")
		if err != nil {
			return err
		}
		defer os.Remove(fh.Name())
		_, err = writeChunks(tx, id, up.Chunks, fh)
		if err == nil && !noSync {
			err = fh.Sync()
		}
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(fh.Name(), dirs.upload(id))
		}
		return err
	})
}
