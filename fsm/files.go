package fsm

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
)

// blobDirs is where blob bytes rest, beside the database:
//
//	blobs/uploads/<sha256(id)>  chunks of an upload not committed yet, written at their offsets
//	blobs/sha256/<hex>          committed content, named by its digest, never written again
//	blobs/tmp/                  restores, migrations and repairs before their rename
type blobDirs struct {
	root    string
	uploads string
	sha256  string
	tmp     string
}

func newBlobDirs(dbPath string) blobDirs {
	root := filepath.Join(filepath.Dir(dbPath), "blobs")
	return blobDirs{root: root, uploads: filepath.Join(root, "uploads"), sha256: filepath.Join(root, "sha256"), tmp: filepath.Join(root, "tmp")}
}

func (d blobDirs) create() error {
	for _, dir := range []string{d.root, d.uploads, d.sha256, d.tmp} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
	}
	return nil
}

// upload returns the file of an upload. Upload ids are any bytes a command
// carries (up to maxIDLen): the file is named by the id's sha256 so that
// no id is refused here that an older replica would accept.
func (d blobDirs) upload(id string) string {
	sum := sha256.Sum256([]byte(id))
	return filepath.Join(d.uploads, hex.EncodeToString(sum[:]))
}

// blob returns the file of a committed digest. Digests reach it only after
// validDigest accepted them, so the name is 64 hex digits.
func (d blobDirs) blob(digest string) string {
	return filepath.Join(d.sha256, strings.TrimPrefix(digest, "sha256:"))
}

// validDigest accepts what a blob file can be named after: sha256 in
// lower-case hex, which is what the leader computes for every upload.
func validDigest(digest string) bool {
	hexPart, ok := strings.CutPrefix(digest, "sha256:")
	return ok && len(hexPart) == sha256.Size*2 && isLowerHex(hexPart)
}

// validOtherDigest accepts the artifact digest a commit carries beside
// its sha256 blob address: <algorithm>:<hex>, the algorithm in go-digest's
// grammar and not sha256, the hex lower-case and at most 512 bits. It
// checks the form only, not that this binary knows the algorithm, so a
// replica applies what its peers apply whatever algorithms it was built with.
func validOtherDigest(d string) bool {
	algo, hexPart, ok := strings.Cut(d, ":")
	if !ok || algo == "sha256" || !algorithmName.MatchString(algo) || hexPart == "" || len(hexPart) > 128 {
		return false
	}
	return isLowerHex(hexPart)
}

// algorithmName is go-digest's grammar of algorithm names.
var algorithmName = regexp.MustCompile(`^[a-z0-9]+([+._-][a-z0-9]+)*$`)

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// ioError marks a failure of the local disk (ENOSPC, EIO) during apply: the
// batch's transaction is rolled back and retried like a failed bbolt
// commit, never taken as the command's business result, which would make
// this replica diverge from the others.
type ioError struct{ err error }

func (e *ioError) Error() string { return e.err.Error() }
func (e *ioError) Unwrap() error { return e.err }

func ioErr(format string, args ...any) error {
	return &ioError{fmt.Errorf(format, args...)}
}

func isIOError(err error) bool {
	var e *ioError
	return errors.As(err, &e)
}

// hashBufs recycles the buffers files are hashed and copied through.
var hashBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// copyBuffered copies r to w through a pooled buffer.
func copyBuffered(w io.Writer, r io.Reader) (int64, error) {
	bp := hashBufs.Get().(*[]byte)
	defer hashBufs.Put(bp)
	return io.CopyBuffer(w, r, *bp)
}

// fileDigest streams the file at path through sha256 and returns its
// digest and size.
func fileDigest(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	return readerDigest(f)
}

// readerDigest streams r through sha256.
func readerDigest(r io.Reader) (string, int64, error) {
	h := sha256.New()
	n, err := copyBuffered(h, r)
	if err != nil {
		return "", 0, err
	}
	return sumDigest(h), n, nil
}

func sumDigest(h hash.Hash) string {
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// writeTemp streams r into a temporary file and checks it hashes to
// digest with size bytes, and syncs it: the first half of writing a blob
// file (restores, migrations and repairs), done without any lock. The
// caller renames it into place with publishTemp or removes it.
func (d blobDirs) writeTemp(digest string, size int64, r io.Reader, noSync bool) (string, error) {
	tmp, err := os.CreateTemp(d.tmp, "blob-*")
	if err != nil {
		return "", fmt.Errorf("write blob %s: %w", digest, err)
	}
	h := sha256.New()
	n, err := copyBuffered(io.MultiWriter(tmp, h), r)
	if err == nil && (n != size || sumDigest(h) != digest) {
		err = fmt.Errorf("content of %d bytes hashes to %s, want %d bytes: %w", n, sumDigest(h), size, errBlobMismatch)
	}
	if err == nil && !noSync {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		return "", fmt.Errorf("write blob %s: %w", digest, err)
	}
	return tmp.Name(), nil
}

// publishTemp renames a file from writeTemp to the blob file of digest, so
// a blob file only ever appears complete and correct; a file it replaces
// failed its digest, and readers holding that one open keep its bytes.
func (d blobDirs) publishTemp(tmp, digest string, noSync bool) error {
	err := os.Rename(tmp, d.blob(digest))
	if err == nil && !noSync {
		err = syncDir(d.sha256)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write blob %s: %w", digest, err)
	}
	return nil
}

// writeVerified is writeTemp then publishTemp.
func (d blobDirs) writeVerified(digest string, size int64, r io.Reader, noSync bool) error {
	tmp, err := d.writeTemp(digest, size, r, noSync)
	if err != nil {
		return err
	}
	return d.publishTemp(tmp, digest, noSync)
}

// errBlobMismatch is a blob file, or bytes meant for one, that do not hash
// to the digest they are stored under.
var errBlobMismatch = errors.New("blob content does not match its digest")

// checkBlobFile reports whether the blob file for digest exists with size
// bytes that hash to digest.
func (d blobDirs) checkBlobFile(digest string, size int64) bool {
	got, n, err := fileDigest(d.blob(digest))
	return err == nil && n == size && got == digest
}
