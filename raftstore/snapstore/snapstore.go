// Package snapstore is a raft.SnapshotStore whose snapshots may reference
// immutable files by hard link instead of copying their bytes.
//
// A snapshot is a directory holding an ordered list of segments: files of
// bytes written to the sink (inline) and files linked into it with
// LinkFile. Open yields the segments' bytes in order as one stream, so a
// reader that knows nothing of links (raft sending InstallSnapshot, an
// FSM's Restore) gets exactly the bytes it would have got had they all
// been written inline. A snapshot kept on the replica's own disk thus
// costs only the bytes that are not already in immutable files.
//
// Like raft's FileSnapshotStore: snapshots are built in a "<id>.tmp"
// directory renamed into place on Close (so a crash leaves nothing
// listed), every inline segment carries a CRC-64 checked on Open, and the
// newest retain snapshots are kept. A linked segment is the first bytes
// of a file that must not change (it may grow), checked for its size
// only: reading it for a checksum would read every immutable file
// on every snapshot and again on every Open, and its reader verifies it
// anyway (the FSM's restore checks each blob against its sha256). Snapshots written by raft's FileSnapshotStore
// in the same directory (meta.json and state.bin) are read as one inline
// segment, so a replica upgraded in place keeps its snapshots.
package snapstore

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc64"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Linker is implemented by the sinks of this store: an FSM's Persist
// links its immutable files into the snapshot when the sink has it, and
// writes their bytes otherwise.
type Linker interface {
	// LinkFile appends the first size bytes of the file at path to the
	// stream as its next segment. Those bytes must not change afterwards;
	// the file may grow past them.
	LinkFile(path string, size int64) error
}

const (
	metaFile   = "meta.json"
	legacyFile = "state.bin" // raft's FileSnapshotStore's only segment
	tmpSuffix  = ".tmp"
	// dirName is the directory under the base, as raft's store names it.
	dirName = "snapshots"
)

var crcTable = crc64.MakeTable(crc64.ECMA)

// Segment is one file of a snapshot's stream.
type Segment struct {
	Name string
	Size int64
	// CRC is that of an inline segment; a linked one has none (releases
	// before 2026-12-02 recorded one, which Open ignores).
	CRC uint64 `json:",omitempty"`
	// Linked is set when the file is a hard link to (or, across
	// filesystems, a copy of) a file that LinkFile was given.
	Linked bool `json:",omitempty"`
}

// meta is meta.json: raft's metadata, raft's legacy CRC, and the segments.
type meta struct {
	raft.SnapshotMeta
	// CRC is raft's FileSnapshotStore's CRC-64 of state.bin, big-endian;
	// only snapshots it wrote have it.
	CRC      []byte    `json:",omitempty"`
	Segments []Segment `json:",omitempty"`
}

// segments is the stream's segments, a legacy snapshot's state.bin included.
func (m *meta) segments() []Segment {
	if len(m.Segments) == 0 && len(m.CRC) == 8 {
		return []Segment{{Name: legacyFile, Size: m.Size, CRC: binary.BigEndian.Uint64(m.CRC)}}
	}
	return m.Segments
}

// Store keeps snapshots in <base>/snapshots.
type Store struct {
	dir    string
	retain int
	// mu serialises retention against concurrent Closes.
	mu sync.Mutex
}

var _ raft.SnapshotStore = (*Store)(nil)

// New opens the store in <base>/snapshots, keeping the newest retain
// snapshots, and removes snapshots whose creation never completed.
func New(base string, retain int) (*Store, error) {
	if retain < 1 {
		return nil, fmt.Errorf("snapshot store: retain %d, want at least 1", retain)
	}
	dir := filepath.Join(base, dirName)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("snapshot store: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("snapshot store: %w", err)
	}
	for _, e := range entries {
		if e.IsDir() && strings.HasSuffix(e.Name(), tmpSuffix) {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return nil, fmt.Errorf("snapshot store: remove incomplete %s: %w", e.Name(), err)
			}
		}
	}
	return &Store{dir: dir, retain: retain}, nil
}

// Create starts a snapshot; nothing of it is listed until the sink closes.
func (s *Store) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, _ raft.Transport) (raft.SnapshotSink, error) {
	if version != 1 {
		return nil, fmt.Errorf("create snapshot: unsupported snapshot version %d", version)
	}
	id := fmt.Sprintf("%d-%d-%d", term, index, time.Now().UnixMilli())
	dir := filepath.Join(s.dir, id+tmpSuffix)
	if err := os.Mkdir(dir, 0o750); err != nil {
		return nil, fmt.Errorf("create snapshot %s: %w", id, err)
	}
	return &Sink{store: s, dir: dir, meta: meta{SnapshotMeta: raft.SnapshotMeta{
		Version: version, ID: id, Index: index, Term: term,
		Configuration: configuration, ConfigurationIndex: configurationIndex,
	}}}, nil
}

// List returns the complete snapshots, newest first.
func (s *Store) List() ([]*raft.SnapshotMeta, error) {
	metas, err := s.list()
	if err != nil {
		return nil, err
	}
	out := make([]*raft.SnapshotMeta, len(metas))
	for i, m := range metas {
		out[i] = &m.SnapshotMeta
	}
	return out, nil
}

// list reads every complete snapshot's meta, newest first. A directory
// without a readable meta.json is not a snapshot and is skipped.
func (s *Store) list() ([]*meta, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	var metas []*meta
	for _, e := range entries {
		if !e.IsDir() || strings.HasSuffix(e.Name(), tmpSuffix) {
			continue
		}
		m, err := s.readMeta(e.Name())
		if err != nil || m.Version < raft.SnapshotVersionMin || m.Version > raft.SnapshotVersionMax {
			continue
		}
		metas = append(metas, m)
	}
	slices.SortFunc(metas, func(a, b *meta) int {
		switch {
		case a.Term != b.Term:
			return cmpDesc(a.Term, b.Term)
		case a.Index != b.Index:
			return cmpDesc(a.Index, b.Index)
		default:
			return strings.Compare(b.ID, a.ID)
		}
	})
	return metas, nil
}

func cmpDesc(a, b uint64) int {
	if a > b {
		return -1
	}
	return 1
}

func (s *Store) readMeta(id string) (*meta, error) {
	data, err := os.ReadFile(filepath.Join(s.dir, id, metaFile))
	if err != nil {
		return nil, err
	}
	var m meta
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("snapshot %s: %s: %w", id, metaFile, err)
	}
	return &m, nil
}

// Open checks every segment's size and CRC and returns a reader of the
// whole stream. The reader holds the segments open, so it keeps reading
// even if retention removes the snapshot meanwhile.
func (s *Store) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	m, err := s.readMeta(id)
	if err != nil {
		return nil, nil, fmt.Errorf("open snapshot %s: %w", id, err)
	}
	r := &reader{}
	var total int64
	segs := m.segments()
	for _, seg := range segs {
		f, err := os.Open(filepath.Join(s.dir, id, seg.Name))
		if err != nil {
			r.Close()
			return nil, nil, fmt.Errorf("open snapshot %s: %w", id, err)
		}
		r.files = append(r.files, f)
		if err := checkSegment(f, seg); err != nil {
			r.Close()
			return nil, nil, fmt.Errorf("open snapshot %s: %w", id, err)
		}
		total += seg.Size
	}
	if total != m.Size {
		r.Close()
		return nil, nil, fmt.Errorf("open snapshot %s: segments hold %d bytes, meta says %d", id, total, m.Size)
	}
	readers := make([]io.Reader, len(r.files))
	for i, f := range r.files {
		// A linked file may have grown past its segment.
		readers[i] = io.NewSectionReader(f, 0, segs[i].Size)
	}
	r.Reader = bufio.NewReaderSize(io.MultiReader(readers...), 256<<10)
	return &m.SnapshotMeta, r, nil
}

// checkSegment checks that a linked segment's file holds its bytes, and
// an inline one's size and CRC, leaving f at its start.
func checkSegment(f *os.File, seg Segment) error {
	if seg.Linked {
		fi, err := f.Stat()
		if err == nil && fi.Size() < seg.Size {
			err = fmt.Errorf("linked segment %s: %d bytes, want at least %d", seg.Name, fi.Size(), seg.Size)
		}
		return err
	}
	h := crc64.New(crcTable)
	n, err := io.Copy(h, bufio.NewReaderSize(f, 256<<10))
	if err == nil && (n != seg.Size || h.Sum64() != seg.CRC) {
		err = fmt.Errorf("segment %s: %d bytes with CRC %016x, want %d bytes with CRC %016x", seg.Name, n, h.Sum64(), seg.Size, seg.CRC)
	}
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	return err
}

type reader struct {
	io.Reader
	files []*os.File
}

func (r *reader) Close() error {
	var errs []error
	for _, f := range r.files {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}

// reap removes all but the newest retain snapshots.
func (s *Store) reap() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	metas, err := s.list()
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range metas[min(s.retain, len(metas)):] {
		// Removing a link leaves the linked file to its other names.
		if err := os.RemoveAll(filepath.Join(s.dir, m.ID)); err != nil {
			errs = append(errs, fmt.Errorf("remove old snapshot %s: %w", m.ID, err))
		}
	}
	return errors.Join(errs...)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Sink is a snapshot being written: bytes written go to inline segments,
// files given to LinkFile become segments of their own, in call order.
type Sink struct {
	store *Store
	dir   string
	meta  meta

	// the inline segment being written, if any
	file *os.File
	buf  *bufio.Writer
	crc  hash.Hash64
	size int64

	done bool
}

var _ Linker = (*Sink)(nil)

// ID is the snapshot's id.
func (s *Sink) ID() string { return s.meta.ID }

func (s *Sink) Write(p []byte) (int, error) {
	if s.done {
		return 0, fmt.Errorf("snapshot %s: write after close", s.meta.ID)
	}
	if s.file == nil {
		f, err := os.OpenFile(filepath.Join(s.dir, s.nextName("inline")), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o640)
		if err != nil {
			return 0, fmt.Errorf("snapshot %s: %w", s.meta.ID, err)
		}
		s.file, s.crc, s.size = f, crc64.New(crcTable), 0
		s.buf = bufio.NewWriterSize(io.MultiWriter(f, s.crc), 256<<10)
	}
	n, err := s.buf.Write(p)
	s.size += int64(n)
	if err != nil {
		return n, fmt.Errorf("snapshot %s: %w", s.meta.ID, err)
	}
	return n, nil
}

// nextName names the next segment: its position keeps ls in stream order.
func (s *Sink) nextName(kind string) string {
	return fmt.Sprintf("%06d.%s", len(s.meta.Segments), kind)
}

// endInline makes the inline segment being written, if any, durable and
// appends it to the segments.
func (s *Sink) endInline() error {
	if s.file == nil {
		return nil
	}
	f := s.file
	s.file = nil
	err := s.buf.Flush()
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", s.meta.ID, err)
	}
	s.meta.Segments = append(s.meta.Segments, Segment{Name: filepath.Base(f.Name()), Size: s.size, CRC: s.crc.Sum64()})
	return nil
}

// LinkFile appends the first size bytes of the file at path as the
// stream's next segment: a hard link when path is on the snapshot's
// filesystem, else a copy of those bytes. Its bytes are not read.
func (s *Sink) LinkFile(path string, size int64) error {
	if s.done {
		return fmt.Errorf("snapshot %s: link after close", s.meta.ID)
	}
	if err := s.endInline(); err != nil {
		return err
	}
	dst := filepath.Join(s.dir, s.nextName("link"))
	if err := os.Link(path, dst); err != nil {
		if err := copyFile(dst, path, size); err != nil {
			return fmt.Errorf("snapshot %s: link or copy %s: %w", s.meta.ID, path, err)
		}
	}
	fi, err := os.Stat(dst)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", s.meta.ID, err)
	}
	if fi.Size() < size {
		return fmt.Errorf("snapshot %s: %s holds %d bytes, want at least %d", s.meta.ID, path, fi.Size(), size)
	}
	s.meta.Segments = append(s.meta.Segments, Segment{Name: filepath.Base(dst), Size: size, Linked: true})
	return nil
}

// copyFile copies the first size bytes of src to dst.
func copyFile(dst, src string, size int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o640)
	if err != nil {
		return err
	}
	_, err = io.CopyN(out, in, size)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

// Close completes the snapshot: segments and meta made durable, the
// directory renamed into place, older snapshots beyond retain removed.
func (s *Sink) Close() error {
	if s.done {
		return nil
	}
	if err := s.finish(); err != nil {
		s.Cancel()
		return err
	}
	return s.store.reap()
}

func (s *Sink) finish() error {
	if err := s.endInline(); err != nil {
		return err
	}
	s.done = true
	for _, seg := range s.meta.Segments {
		s.meta.Size += seg.Size
	}
	data, err := json.Marshal(&s.meta)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", s.meta.ID, err)
	}
	mf, err := os.OpenFile(filepath.Join(s.dir, metaFile), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", s.meta.ID, err)
	}
	_, err = mf.Write(data)
	if err == nil {
		err = mf.Sync()
	}
	if cerr := mf.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(s.dir)
	}
	if err != nil {
		return fmt.Errorf("snapshot %s: write meta: %w", s.meta.ID, err)
	}
	final := strings.TrimSuffix(s.dir, tmpSuffix)
	if err := os.Rename(s.dir, final); err != nil {
		return fmt.Errorf("snapshot %s: %w", s.meta.ID, err)
	}
	s.dir = final
	if err := syncDir(s.store.dir); err != nil {
		return fmt.Errorf("snapshot %s: %w", s.meta.ID, err)
	}
	return nil
}

// Cancel abandons the snapshot and removes what was written of it.
func (s *Sink) Cancel() error {
	if s.file != nil {
		s.file.Close()
		s.file = nil
	}
	s.done = true
	if !strings.HasSuffix(s.dir, tmpSuffix) {
		return nil // completed: Cancel after Close leaves the snapshot
	}
	if err := os.RemoveAll(s.dir); err != nil {
		return fmt.Errorf("cancel snapshot %s: %w", s.meta.ID, err)
	}
	return nil
}
