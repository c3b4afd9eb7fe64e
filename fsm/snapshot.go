package fsm

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// FileLinker is what a raft.SnapshotSink may implement to keep a file's
// bytes by reference instead of receiving them: Persist calls
// LinkFile(path, size) where it would write the file's first size bytes
// (all of a blob file, what an upload file holds so far; neither ever
// changes, though an upload file grows), and the sink must splice exactly
// those bytes into the stream at that point when the snapshot is opened.
// A SnapshotStore on the same volume keeps a hard link, so a snapshot on a
// replica's own disk never copies blob or upload bytes.
type FileLinker interface {
	LinkFile(path string, size int64) error
}

// Snapshot stream, version 4. Every record starts with a tag byte; sizes
// are big-endian uint64, names a length byte and the name.
//
//	"sourceraft-fsm-snapshot\x00" version(8)
//	'D' size  bbolt file bytes  sha256 of them(32)
//	'B' name size  bytes of one blob file (name: the digest)
//	'U' name size  the first size bytes of an upload file (name: the upload id)
//	'E' blobs(8) uploads(8)
//
// A stream that does not start with the magic is a version 2 snapshot: the
// bbolt file alone, blobs inside it (migrated after the restore).
//
// Blob records are checked against their names; the database is checked
// against its digest before bbolt reads a page of it, because bbolt trusts
// its pages: a damaged one faults or loops instead of returning an error.
// Version 3 had no digest and is refused (it was never released).
var snapshotMagic = []byte("sourceraft-fsm-snapshot\x00")

const snapshotVersion = 4

// Snapshot captures the applied state on the FSM goroutine: a read
// transaction for the database, a hard link of every blob file into a pin
// directory (so that a delete or garbage collection applied while Persist
// runs cannot take one away, and a FileLinker gets a stable path), and a
// hard link of every upload file beside them, held open, with its length
// at this index: later chunks are only ever written beyond it, so a
// FileLinker may keep that prefix by link as well.
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
	s := &snapshot{tx: tx}
	if err := s.pin(f.dirs); err != nil {
		s.Release()
		return nil, fmt.Errorf("fsm: snapshot: %w", err)
	}
	return s, nil
}

type pinnedBlob struct {
	digest string
	size   int64
	path   string
}

type pinnedUpload struct {
	id   string
	size int64
	path string
	file *os.File
}

type snapshot struct {
	tx      *bolt.Tx
	pinDir  string
	blobs   []pinnedBlob
	uploads []pinnedUpload
	once    sync.Once
}

func (s *snapshot) pin(dirs blobDirs) error {
	dir, err := os.MkdirTemp(dirs.root, pinPrefix)
	if err != nil {
		return err
	}
	s.pinDir = dir
	err = s.tx.Bucket(bucketBlobs).ForEach(func(k, v []byte) error {
		rec, err := decodeBlobRecord(v)
		if err != nil {
			return fmt.Errorf("blob %s: %w", k, err)
		}
		digest := string(k)
		pinned := filepath.Join(dir, filepath.Base(dirs.blob(digest)))
		if err := os.Link(dirs.blob(digest), pinned); err != nil {
			return fmt.Errorf("pin blob file: %w", err)
		}
		s.blobs = append(s.blobs, pinnedBlob{digest: digest, size: rec.Size, path: pinned})
		return nil
	})
	if err != nil {
		return err
	}
	return s.tx.Bucket(bucketUploads).ForEach(func(k, v []byte) error {
		up, err := decodeUploadRecord(v)
		if err != nil {
			return fmt.Errorf("upload %q: %w", k, err)
		}
		// Upload ids are free-form: the pin is named by its position.
		pinned := filepath.Join(dir, fmt.Sprintf("upload-%d", len(s.uploads)))
		if err := os.Link(dirs.upload(string(k)), pinned); err != nil {
			return fmt.Errorf("pin upload file: %w", err)
		}
		fh, err := os.Open(pinned)
		if err != nil {
			return fmt.Errorf("pin upload file: %w", err)
		}
		s.uploads = append(s.uploads, pinnedUpload{id: string(k), size: up.Bytes, path: pinned, file: fh})
		return nil
	})
}

// pinPrefix names the directories Snapshot hard-links blob files into; Open
// removes any a crash left.
const pinPrefix = "snapshot-pin-"

// Persist streams the snapshot to sink: the database, then every blob
// (linked when the sink can keep files), then every upload's bytes.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	defer s.Release()
	if err := s.write(sink); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("fsm: persist snapshot: %w", err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("fsm: persist snapshot: %w", err)
	}
	return nil
}

func (s *snapshot) write(sink raft.SnapshotSink) error {
	linker, _ := sink.(FileLinker)
	w := bufio.NewWriterSize(sink, 256<<10)
	head := append(append([]byte(nil), snapshotMagic...), binary.BigEndian.AppendUint64(nil, snapshotVersion)...)
	head = append(head, 'D')
	head = binary.BigEndian.AppendUint64(head, uint64(s.tx.Size()))
	if _, err := w.Write(head); err != nil {
		return err
	}
	sum := sha256.New()
	if n, err := s.tx.WriteTo(io.MultiWriter(w, sum)); err != nil {
		return fmt.Errorf("database: %w", err)
	} else if n != s.tx.Size() {
		return fmt.Errorf("database: wrote %d of %d bytes", n, s.tx.Size())
	}
	if _, err := w.Write(sum.Sum(nil)); err != nil {
		return err
	}
	for _, b := range s.blobs {
		if _, err := w.Write(recordHeader('B', b.digest, b.size)); err != nil {
			return err
		}
		if linker != nil {
			// What was buffered goes first, so the link lands where
			// the bytes would have.
			if err := w.Flush(); err != nil {
				return err
			}
			if err := linker.LinkFile(b.path, b.size); err != nil {
				return fmt.Errorf("link blob %s: %w", b.digest, err)
			}
			continue
		}
		if err := copyFile(w, b.path, b.size); err != nil {
			return fmt.Errorf("blob %s: %w", b.digest, err)
		}
	}
	for _, u := range s.uploads {
		if _, err := w.Write(recordHeader('U', u.id, u.size)); err != nil {
			return err
		}
		if linker != nil {
			if err := w.Flush(); err != nil {
				return err
			}
			// Chunks are written without fsync; the snapshot must hold
			// them durably, as the inline copy it replaces did.
			if err := u.file.Sync(); err != nil {
				return fmt.Errorf("upload %q: %w", u.id, err)
			}
			if err := linker.LinkFile(u.path, u.size); err != nil {
				return fmt.Errorf("link upload %q: %w", u.id, err)
			}
			continue
		}
		if n, err := copyBuffered(w, io.NewSectionReader(u.file, 0, u.size)); err != nil || n != u.size {
			return fmt.Errorf("upload %q: copied %d of %d bytes: %v", u.id, n, u.size, err)
		}
	}
	tail := []byte{'E'}
	tail = binary.BigEndian.AppendUint64(tail, uint64(len(s.blobs)))
	tail = binary.BigEndian.AppendUint64(tail, uint64(len(s.uploads)))
	if _, err := w.Write(tail); err != nil {
		return err
	}
	return w.Flush()
}

func recordHeader(tag byte, name string, size int64) []byte {
	b := make([]byte, 0, 2+len(name)+8)
	b = append(b, tag, byte(len(name)))
	b = append(b, name...)
	return binary.BigEndian.AppendUint64(b, uint64(size))
}

func copyFile(w io.Writer, path string, size int64) error {
	fh, err := os.Open(path)
	if err != nil {
		return err
	}
	defer fh.Close()
	n, err := copyBuffered(w, io.LimitReader(fh, size))
	if err == nil && n != size {
		err = fmt.Errorf("file has %d bytes, want %d", n, size)
	}
	return err
}

// Release ends the read transaction and drops the pins.
func (s *snapshot) Release() {
	s.once.Do(func() {
		_ = s.tx.Rollback()
		for _, u := range s.uploads {
			_ = u.file.Close()
		}
		if s.pinDir != "" {
			_ = os.RemoveAll(s.pinDir)
		}
	})
}

// Restore replaces the whole state with a snapshot written by Persist (or
// by a version 2 replica: the database alone). Blob files already here
// with the right size and digest are kept and their bytes skipped; the
// others are written to temporary files, verified and renamed. The
// database is swapped in last; files the restored state does not reference
// are removed after the swap.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	tmp, err := f.receive(bufio.NewReaderSize(rc, 256<<10))
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

// receive reads a snapshot: the database into a synced temporary file next
// to the live one (checked to be one), the blob and upload files into
// place.
func (f *FSM) receive(r *bufio.Reader) (string, error) {
	head, err := r.Peek(len(snapshotMagic))
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	if !bytes.Equal(head, snapshotMagic) {
		tmp, _, err := f.receiveDB(r, -1, nil) // version 2: the database is the stream
		return tmp, err
	}
	var fixed [8]byte
	if _, err := r.Discard(len(snapshotMagic)); err != nil {
		return "", err
	}
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return "", fmt.Errorf("snapshot header: %w", err)
	}
	if v := binary.BigEndian.Uint64(fixed[:]); v != snapshotVersion {
		return "", fmt.Errorf("snapshot version %d, want %d", v, snapshotVersion)
	}
	if tag, err := r.ReadByte(); err != nil || tag != 'D' {
		return "", fmt.Errorf("snapshot: no database record (%q, %v)", tag, err)
	}
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return "", fmt.Errorf("snapshot database size: %w", err)
	}
	size := int64(binary.BigEndian.Uint64(fixed[:]))
	if size < 0 {
		return "", fmt.Errorf("snapshot database size %d", uint64(size))
	}
	tmp, refs, err := f.receiveDB(io.LimitReader(r, size), size, r)
	if err != nil {
		return "", err
	}
	if err := f.receiveFiles(r, refs); err != nil {
		_ = os.Remove(tmp)
		return "", err
	}
	return tmp, nil
}

// receiveDB copies the database into a temporary file and checks it: a
// layout 2 file alone (version 2), or a layout 3 file whose sha256 follows
// its bytes (version 4, digest reads it), returning the files it refers to.
func (f *FSM) receiveDB(r io.Reader, size int64, digest io.Reader) (string, fileRefs, error) {
	tmp, err := os.CreateTemp(filepath.Dir(f.path), filepath.Base(restorePattern(f.path)))
	if err != nil {
		return "", nil, err
	}
	sum := sha256.New()
	n, err := copyBuffered(io.MultiWriter(tmp, sum), r)
	if err == nil && size >= 0 && n != size {
		err = fmt.Errorf("snapshot database: %d of %d bytes", n, size)
	}
	if err == nil && digest != nil {
		var want [sha256.Size]byte
		if _, rerr := io.ReadFull(digest, want[:]); rerr != nil {
			err = fmt.Errorf("snapshot database digest: %w", noEOF(rerr))
		} else if got := sum.Sum(nil); !bytes.Equal(got, want[:]) {
			err = fmt.Errorf("snapshot database is damaged: sha256 %x, want %x", got, want)
		}
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	layout := uint64(layoutV2)
	if digest != nil {
		layout = layoutVersion
	}
	var refs fileRefs
	if err == nil {
		refs, err = checkSnapshot(tmp.Name(), layout)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		return "", nil, err
	}
	return tmp.Name(), refs, nil
}

// receiveFiles reads the blob and upload records up to the trailer; each
// file the database refers to must be among them, with its size.
func (f *FSM) receiveFiles(r *bufio.Reader, refs fileRefs) error {
	var blobs, uploads uint64
	got := make(map[fileRef]bool, len(refs))
	for {
		tag, err := r.ReadByte()
		if err != nil {
			return fmt.Errorf("snapshot: %w", noEOF(err))
		}
		if tag == 'E' {
			var tail [16]byte
			if _, err := io.ReadFull(r, tail[:]); err != nil {
				return fmt.Errorf("snapshot trailer: %w", noEOF(err))
			}
			if binary.BigEndian.Uint64(tail[:]) != blobs || binary.BigEndian.Uint64(tail[8:]) != uploads {
				return fmt.Errorf("snapshot trailer counts %d blobs, %d uploads; read %d, %d",
					binary.BigEndian.Uint64(tail[:]), binary.BigEndian.Uint64(tail[8:]), blobs, uploads)
			}
			for ref := range refs {
				if !got[ref] {
					return fmt.Errorf("snapshot: the database refers to %c %q, which the stream does not carry", ref.tag, ref.name)
				}
			}
			return nil
		}
		name, size, err := readRecordHeader(r)
		if err != nil {
			return err
		}
		ref := fileRef{tag, name}
		if want, ok := refs[ref]; ok {
			if want != size {
				return fmt.Errorf("snapshot: %c %q has %d bytes, the database says %d", tag, name, size, want)
			}
			got[ref] = true
		}
		body := io.LimitReader(r, size)
		switch tag {
		case 'B':
			blobs++
			if err := f.receiveBlob(name, size, body); err != nil {
				return err
			}
		case 'U':
			uploads++
			if err := f.receiveUpload(name, size, body); err != nil {
				return err
			}
		default:
			return fmt.Errorf("snapshot: unknown record %q", tag)
		}
	}
}

func readRecordHeader(r *bufio.Reader) (string, int64, error) {
	n, err := r.ReadByte()
	if err != nil {
		return "", 0, fmt.Errorf("snapshot record: %w", noEOF(err))
	}
	b := make([]byte, int(n)+8)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", 0, fmt.Errorf("snapshot record: %w", noEOF(err))
	}
	return string(b[:n]), int64(binary.BigEndian.Uint64(b[n:])), nil
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// receiveBlob keeps a blob file already here only after checking its size
// and digest; otherwise it writes the snapshot's bytes.
func (f *FSM) receiveBlob(digest string, size int64, body io.Reader) error {
	if !validDigest(digest) {
		return fmt.Errorf("snapshot: blob %q is not a sha256 digest", digest)
	}
	if f.dirs.checkBlobFile(digest, size) {
		if n, err := io.Copy(io.Discard, body); err != nil || n != size {
			return fmt.Errorf("snapshot: blob %s: %d of %d bytes: %v", digest, n, size, noEOF(err))
		}
		return nil
	}
	tmp, err := f.dirs.writeTemp(digest, size, body, f.opts.NoSync)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	f.filesMu.Lock()
	defer f.filesMu.Unlock()
	if err := f.dirs.publishTemp(tmp, digest, f.opts.NoSync); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	f.forget(digest)
	return nil
}

func (f *FSM) receiveUpload(id string, size int64, body io.Reader) error {
	tmp, err := os.CreateTemp(f.dirs.tmp, "upload-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	n, err := copyBuffered(tmp, body)
	if err == nil && n != size {
		err = fmt.Errorf("%d of %d bytes", n, size)
	}
	if err == nil && !f.opts.NoSync {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), f.dirs.upload(id))
	}
	if err != nil {
		return fmt.Errorf("snapshot: upload %q: %w", id, noEOF(err))
	}
	return nil
}

func restorePattern(path string) string { return path + ".restore-*" }

// walkBucket reads every key and value of b and its nested buckets, so
// every page they live on is loaded once.
func walkBucket(b *bolt.Bucket) error {
	return b.ForEach(func(k, v []byte) error {
		if v == nil {
			if nb := b.Bucket(k); nb != nil {
				return walkBucket(nb)
			}
		}
		return nil
	})
}

// checkSnapshot opens the received database read-only and reads every
// bucket and value in it before it becomes the state. bbolt panics on a
// damaged page when it first reads it, or faults reading beyond its
// mapping: here that is a refused snapshot, later it would be a crashed
// replica (both found by FuzzRestore). A version 2 stream has no digest,
// so this is all that stands between it and the state.
func checkSnapshot(path string, layout uint64) (refs fileRefs, err error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("snapshot is not a database: %w", err)
	}
	defer db.Close()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("snapshot database is damaged: %v", r)
		}
	}()
	err = db.View(func(tx *bolt.Tx) error {
		if err := tx.ForEach(func(_ []byte, b *bolt.Bucket) error { return walkBucket(b) }); err != nil {
			return err
		}
		if tx.Bucket(bucketMeta) == nil {
			return errors.New("snapshot has no meta bucket")
		}
		if v := tx.Bucket(bucketMeta).Get(keyLayout); string(v) != string(uint64Value(layout)) {
			return fmt.Errorf("snapshot database has layout %x, want version %d", v, layout)
		}
		if _, err := readApplied(tx); err != nil {
			return err
		}
		if layout == layoutV2 {
			return nil // its blobs are inside it
		}
		refs, err = readFileRefs(tx)
		return err
	})
	return refs, err
}

// fileRefs are the blob and upload files a layout 3 database refers to,
// with the bytes each must have; a snapshot stream must carry them all.
type fileRefs map[fileRef]int64

type fileRef struct {
	tag  byte // 'B' or 'U', as in the stream
	name string
}

func readFileRefs(tx *bolt.Tx) (fileRefs, error) {
	refs := fileRefs{}
	for _, b := range []struct {
		tag    byte
		bucket []byte
	}{{'B', bucketBlobs}, {'U', bucketUploads}} {
		bk := tx.Bucket(b.bucket)
		if bk == nil {
			return nil, fmt.Errorf("snapshot database has no %s bucket", b.bucket)
		}
		err := bk.ForEach(func(k, v []byte) error {
			var size int64
			if b.tag == 'B' {
				rec, err := decodeBlobRecord(v)
				if err != nil {
					return fmt.Errorf("blob %q: %w", k, err)
				}
				size = rec.Size
			} else {
				rec, err := decodeUploadRecord(v)
				if err != nil {
					return fmt.Errorf("upload %q: %w", k, err)
				}
				size = rec.Bytes
			}
			refs[fileRef{b.tag, string(k)}] = size
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return refs, nil
}

// swap closes the live database, renames tmp over it and reopens it (which
// migrates a version 2 snapshot and removes the files the restored state
// does not reference). If the rename fails the old database is reopened.
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
	// Before openDB removes the files the restored state does not reference.
	f.arts.Store(newArtifactCache())
	renameErr := os.Rename(tmp, f.path)
	if renameErr == nil {
		if err := syncDir(filepath.Dir(f.path)); err != nil {
			// The rename is done; a crash may undo it, and Raft restores
			// its latest snapshot on start anyway.
			slog.Warn("fsm: restore: sync directory", "err", err)
		}
	}
	db, applied, err := openDB(f.path, f.dirs, f.opts)
	if err != nil {
		return errors.Join(renameErr, err)
	}
	f.db = db
	f.applied.Store(applied)
	return renameErr
}
