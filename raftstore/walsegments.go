package raftstore

import (
	"sync"

	"github.com/hashicorp/raft-wal/fs"
	"github.com/hashicorp/raft-wal/segment"
	"github.com/hashicorp/raft-wal/types"
)

// releasingFiler is raft-wal's segment filer, except that a segment sealed
// while the WAL is open is read through a reader of its own from then on.
// raft-wal keeps a sealed segment's writer as its reader until the segment
// is deleted, and each writer keeps an append buffer as large as the
// largest append it took (8 MiB of chunks here): every sealed segment
// still in the log held 8 MiB of heap, so memory grew with the log kept
// between snapshots (tens of MiB while a large artifact was stored). A
// WAL opened on existing files already reads sealed segments this way.
type releasingFiler struct{ *segment.Filer }

func newReleasingFiler(dir string) releasingFiler {
	return releasingFiler{segment.NewFiler(dir, fs.New())}
}

func (f releasingFiler) Create(info types.SegmentInfo) (types.SegmentWriter, error) {
	w, err := f.Filer.Create(info)
	if err != nil {
		return nil, err
	}
	return &releasingWriter{filer: f.Filer, info: info, w: w}, nil
}

func (f releasingFiler) RecoverTail(info types.SegmentInfo) (types.SegmentWriter, error) {
	w, err := f.Filer.RecoverTail(info)
	if err != nil {
		return nil, err
	}
	return &releasingWriter{filer: f.Filer, info: info, w: w}, nil
}

// releasingWriter is the tail segment's writer until it seals, and then a
// reader of the sealed file; the writer, and its buffer, are let go.
type releasingWriter struct {
	filer *segment.Filer
	info  types.SegmentInfo

	// mu guards the switch: reads hold it shared, so none is inside the
	// writer when it is closed.
	mu         sync.RWMutex
	w          types.SegmentWriter // nil once sealed and reopened
	r          types.SegmentReader
	indexStart uint64
	last       uint64
}

func (s *releasingWriter) Append(entries []types.LogEntry) error {
	if s.w == nil {
		// A segment whose rotation failed (a full disk) stays the tail;
		// its appends fail as raft-wal's own writer's do, and walLog reopens.
		return types.ErrSealed
	}
	return s.w.Append(entries)
}

func (s *releasingWriter) GetLog(idx uint64) (*types.PooledBuffer, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.r != nil {
		return s.r.GetLog(idx)
	}
	return s.w.GetLog(idx)
}

func (s *releasingWriter) LastIndex() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.w == nil {
		return s.last
	}
	return s.w.LastIndex()
}

func (s *releasingWriter) Sealed() (bool, uint64, error) {
	if s.w == nil {
		return true, s.indexStart, nil
	}
	sealed, start, err := s.w.Sealed()
	if err == nil && sealed {
		s.release(start)
	}
	return sealed, start, err
}

func (s *releasingWriter) ForceSeal() (uint64, error) {
	if s.w == nil {
		return s.indexStart, nil
	}
	start, err := s.w.ForceSeal()
	if err == nil {
		s.release(start)
	}
	return start, err
}

// release opens the sealed segment for reading and closes the writer.
// Should the file not open, reads keep going through the writer, as
// raft-wal's own would.
func (s *releasingWriter) release(indexStart uint64) {
	info := s.info
	info.IndexStart = indexStart
	info.MaxIndex = s.w.LastIndex()
	r, err := s.filer.Open(info)
	if err != nil {
		return
	}
	s.mu.Lock()
	w := s.w
	s.w, s.r, s.indexStart, s.last = nil, r, indexStart, info.MaxIndex
	s.mu.Unlock()
	_ = w.Close()
}

func (s *releasingWriter) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.r != nil {
		return s.r.Close()
	}
	return s.w.Close()
}
