// Package archive packs a directory into the deterministic tar.gz that Flux
// sources serve as their artifact: the same tree always gives the same bytes,
// so the same content always gets the same digest on every replica.
//
// What goes in: regular files and directories only, in path order, with
// zeroed times, uid/gid 0, no user or group names, and modes normalised to
// 0755 for directories and executables and 0644 for other files. Symlinks
// are skipped, never followed: a link pointing outside the tree cannot leak
// what it points to. A Filter drops ignored paths (see IgnoreFilter for
// Flux's .sourceignore rules), and Limits bound the total uncompressed bytes
// and the number of entries, checked before a single byte is written, so an
// oversized source fails fast with a LimitError instead of streaming
// half an archive into the store.
package archive

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// ErrLimitExceeded is matched (errors.Is) by every LimitError.
var ErrLimitExceeded = errors.New("archive limit exceeded")

// LimitError reports which limit a directory exceeds.
type LimitError struct {
	// Limit is "size" (uncompressed bytes), "entries" or "depth" (the
	// directories above one entry).
	Limit string
	// Max is the configured limit; Actual is what the tree holds, or what
	// was counted up to the point the limit was crossed.
	Max, Actual int64
}

func (e *LimitError) Error() string {
	switch e.Limit {
	case LimitSize:
		return fmt.Sprintf("%v: source holds at least %d bytes, the limit is %d", ErrLimitExceeded, e.Actual, e.Max)
	case LimitDepth:
		return fmt.Sprintf("%v: source holds an entry %d directories deep, the limit is %d", ErrLimitExceeded, e.Actual, e.Max)
	default:
		return fmt.Sprintf("%v: source holds at least %d entries, the limit is %d", ErrLimitExceeded, e.Actual, e.Max)
	}
}

// Is makes errors.Is(err, ErrLimitExceeded) true for every LimitError.
func (e *LimitError) Is(target error) bool { return target == ErrLimitExceeded }

// The Limit values of a LimitError.
const (
	LimitSize    = "size"
	LimitEntries = "entries"
	LimitDepth   = "depth"
)

// MaxEntryDepth bounds the directories above one entry of a source that
// is written out (an OCI layer, a Bucket's objects): far beyond any real
// source tree, and it keeps one entry from making thousands of
// directories, which cost time quadratic in their depth to create, walk
// and remove.
const MaxEntryDepth = 128

// Filter reports whether the entry at the slash-separated path relative
// to the archived directory is left out. Leaving out a directory leaves
// out everything below it.
type Filter func(path string, isDir bool) bool

// Options tune Write. The zero value archives everything without limits.
type Options struct {
	Filter Filter
	// MaxSize bounds the sum of the regular files' sizes; zero or less is
	// no bound.
	MaxSize int64
	// MaxEntries bounds the number of files and directories; zero or less
	// is no bound.
	MaxEntries int
}

// Stats describes a written archive.
type Stats struct {
	// Entries is the number of files and directories archived.
	Entries int
	// Size is the uncompressed size of the archived files.
	Size int64
	// Written is the number of bytes written to w: the tar.gz size.
	Written int64
}

type entry struct {
	rel  string // slash-separated, relative to the root
	abs  string
	dir  bool
	exec bool
	size int64
}

// Write archives dir into w as a deterministic tar.gz. It walks the tree
// first and fails with a *LimitError before writing anything when the tree
// is over a limit; a file that changes size while being archived fails
// the write instead of producing an archive that differs from the tree.
func Write(dir string, w io.Writer, opts Options) (Stats, error) {
	entries, size, err := collect(dir, opts)
	if err != nil {
		return Stats{}, err
	}
	cw := &countingWriter{w: w}
	gz, err := gzip.NewWriterLevel(cw, gzip.DefaultCompression)
	if err != nil {
		return Stats{}, err
	}
	// A fixed header: no name, no time, the writer's default OS byte.
	gz.Name, gz.Comment, gz.ModTime = "", "", time.Time{}
	tw := tar.NewWriter(gz)
	for _, e := range entries {
		if err := writeEntry(tw, e); err != nil {
			return Stats{}, err
		}
	}
	if err := tw.Close(); err != nil {
		return Stats{}, fmt.Errorf("archive: close tar: %w", err)
	}
	if err := gz.Close(); err != nil {
		return Stats{}, fmt.Errorf("archive: close gzip: %w", err)
	}
	return Stats{Entries: len(entries), Size: size, Written: cw.n}, nil
}

// collect walks dir without following symlinks and returns the entries to
// archive in path order, enforcing the limits as it goes.
func collect(dir string, opts Options) ([]entry, int64, error) {
	root, err := os.Lstat(dir)
	if err != nil {
		return nil, 0, fmt.Errorf("archive: %w", err)
	}
	if !root.IsDir() {
		return nil, 0, fmt.Errorf("archive: %s is not a directory", dir)
	}
	var (
		entries []entry
		size    int64
	)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		t := d.Type()
		// Symlinks, devices, sockets and pipes are never archived.
		if !t.IsRegular() && !t.IsDir() {
			return nil
		}
		if opts.Filter != nil && opts.Filter(rel, d.IsDir()) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		e := entry{rel: rel, abs: p, dir: d.IsDir()}
		if !e.dir {
			e.size = fi.Size()
			e.exec = fi.Mode().Perm()&0o111 != 0
			size += e.size
			if opts.MaxSize > 0 && size > opts.MaxSize {
				return &LimitError{Limit: LimitSize, Max: opts.MaxSize, Actual: size}
			}
		}
		entries = append(entries, e)
		if opts.MaxEntries > 0 && len(entries) > opts.MaxEntries {
			return &LimitError{Limit: LimitEntries, Max: int64(opts.MaxEntries), Actual: int64(len(entries))}
		}
		return nil
	})
	if err != nil {
		var le *LimitError
		if errors.As(err, &le) {
			return nil, 0, err
		}
		return nil, 0, fmt.Errorf("archive: walk %s: %w", dir, err)
	}
	// A parent's path is a prefix of its children's, so sorting by path
	// also puts every directory before its content.
	sort.Slice(entries, func(i, j int) bool { return entries[i].rel < entries[j].rel })
	return entries, size, nil
}

func writeEntry(tw *tar.Writer, e entry) error {
	// Epoch mod time and no owner; the tar writer picks USTAR, or PAX for
	// names USTAR cannot hold, deterministically from the header alone.
	hdr := &tar.Header{Name: e.rel, ModTime: time.Unix(0, 0)}
	switch {
	case e.dir:
		hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, e.rel+"/", 0o755
	case e.exec:
		hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeReg, 0o755, e.size
	default:
		hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeReg, 0o644, e.size
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("archive: header %s: %w", e.rel, err)
	}
	if e.dir {
		return nil
	}
	f, err := os.Open(e.abs)
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	defer f.Close()
	n, err := io.Copy(tw, io.LimitReader(f, e.size))
	if err != nil {
		return fmt.Errorf("archive: copy %s: %w", e.rel, err)
	}
	if n != e.size {
		return fmt.Errorf("archive: %s changed size while being archived", e.rel)
	}
	return nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// splitPath splits a slash path into the components a gitignore matcher takes.
func splitPath(p string) []string { return strings.Split(p, "/") }
