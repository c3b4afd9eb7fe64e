package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sourceraft/sourceraft/storage"
)

var errDiskFull = errors.New("no space left on device")

func TestApplyRetriesFailedCommits(t *testing.T) {
	f := newFSM(t)
	f.retryMin, f.retryMax = time.Millisecond, 4*time.Millisecond
	var failures atomic.Int32
	var sawErr atomic.Bool
	failures.Store(3)
	f.failCommit = func() error {
		if f.Err() != nil {
			sawErr.Store(true)
		}
		if failures.Add(-1) >= 0 {
			return errDiskFull
		}
		return nil
	}
	fd := &feeder{f: f}
	fd.ok(t, storeCmds(t, "u1", pathA, pattern(1, 10))...)
	if !sawErr.Load() {
		t.Fatal("Err did not report the failing commits")
	}
	if f.Err() != nil {
		t.Fatalf("Err after a successful commit: %v", f.Err())
	}
	wantArtifact(t, f, pathA, pattern(1, 10))
	wantRefs(t, f, digestOf(pattern(1, 10)), 1)
}

func TestCloseStopsRetries(t *testing.T) {
	f := newFSM(t)
	f.retryMin, f.retryMax = time.Millisecond, time.Millisecond
	f.failCommit = func() error { return errDiskFull }
	done := make(chan any)
	go func() { done <- (&feeder{f: f}).apply(EncodeSetNode(Node{ID: "a"})) }()
	for f.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	if !errors.Is(f.Err(), errDiskFull) {
		t.Fatalf("Err: %v", f.Err())
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if res, _ := (<-done).(error); !errors.Is(res, ErrClosed) {
		t.Fatalf("result after Close: %v", res)
	}
}

func TestChangedBroadcasts(t *testing.T) {
	f := newFSM(t)
	fd := &feeder{f: f}
	chs := []<-chan struct{}{f.Changed(), f.Changed()}
	fd.ok(t, EncodeSetNode(Node{ID: "a"}))
	for _, ch := range chs {
		select {
		case <-ch:
		default:
			t.Fatal("a waiter was not woken by the apply")
		}
	}
	next := f.Changed()
	select {
	case <-next:
		t.Fatal("the next channel is already closed")
	default:
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	<-next
}

func TestViews(t *testing.T) {
	f := newFSM(t)
	fd := &feeder{f: f}
	paths := []string{
		"gitrepository/team-b/app/1.tar.gz",
		"gitrepository/team-a/app/2.tar.gz",
		"gitrepository/team-a/app/1.tar.gz",
		"gitrepository/team-a/apps/1.tar.gz",
		"helmchart/team-a/app/1.tgz",
	}
	for i, p := range paths {
		fd.ok(t, storeCmds(t, fmt.Sprint("u", i), p, pattern(byte(i), 100*(i+1)))...)
	}
	fd.ok(t, chunkCmds("pending", pattern(9, 10))...)
	for _, tt := range []struct {
		filter storage.Filter
		want   []string
	}{
		{storage.Filter{}, []string{paths[2], paths[1], paths[3], paths[0], paths[4]}},
		{storage.Filter{Kind: "gitrepository", Namespace: "team-a"}, []string{paths[2], paths[1], paths[3]}},
		{storage.Filter{Kind: "gitrepository", Namespace: "team-a", Name: "app"}, []string{paths[2], paths[1]}},
		{storage.Filter{Name: "app"}, []string{paths[2], paths[1], paths[0], paths[4]}},
		{storage.Filter{Namespace: "team-b"}, []string{paths[0]}},
		{storage.Filter{Kind: "bucket"}, nil},
	} {
		arts, err := f.List(tt.filter)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, a := range arts {
			got = append(got, a.Path())
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("List(%+v) = %v, want %v", tt.filter, got, tt.want)
		}
	}
	st, err := f.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if want := (Stats{Artifacts: 5, Bytes: 1500, Blobs: 5, BlobBytes: 1500, Uploads: 1, AppliedIndex: fd.index}); st != want {
		t.Fatalf("stats %+v, want %+v", st, want)
	}
	if _, err := f.Open(mustKey(t, "gitrepository/team-c/app/1.tar.gz")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Open of an unknown artifact: %v", err)
	}
	if f.HasBlob("sha256:nope") {
		t.Fatal("HasBlob of an unknown digest")
	}
	if err := f.Verify("md5:abc"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Verify of an unknown digest: %v", err)
	}
}

func TestClosed(t *testing.T) {
	f := newFSM(t)
	fd := &feeder{f: f}
	content := pattern(1, SmallBlobSize+10)
	fd.ok(t, storeCmds(t, "u1", pathA, content)...)
	c, err := f.Open(mustKey(t, pathA))
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.Artifact(mustKey(t, pathA)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Artifact after Close: %v", err)
	}
	if _, err := f.List(storage.Filter{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("List after Close: %v", err)
	}
	if _, err := f.Snapshot(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Snapshot after Close: %v", err)
	}
	if _, err := f.Open(mustKey(t, pathA)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Open after Close: %v", err)
	}
	// A file opened before stays readable.
	if got, err := io.ReadAll(c.Reader()); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("content opened before Close: %d bytes, %v", len(got), err)
	}
	if res, _ := fd.apply(EncodeSetNode(Node{ID: "a"})).(error); !errors.Is(res, ErrClosed) {
		t.Fatalf("Apply after Close: %v", res)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentReaders streams blobs and reads views while the state is
// applied to and restored underneath; run with -race.
func TestConcurrentReaders(t *testing.T) {
	f := newFSM(t)
	fd := &feeder{f: f}
	for i := range 3 {
		fd.ok(t, storeCmds(t, fmt.Sprint("base", i), fmt.Sprintf("gitrepository/ns/base/%d.tar.gz", i), pattern(byte(i), 3000+i), 700)...)
	}
	snap := snapshotOf(t, f)
	snapIndex := f.AppliedIndex()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := readEverything(f); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for round := range 3 {
		for i := range 10 {
			p := fmt.Sprintf("gitrepository/ns/r%d/%d.tar.gz", round, i)
			fd.ok(t, storeCmds(t, fmt.Sprintf("r%d-%d", round, i), p, pattern(byte(i), 1000*i), 500)...)
			if i%3 == 0 {
				fd.ok(t, EncodeDeleteArtifacts([]string{p}))
			}
		}
		if err := f.Restore(io.NopCloser(bytes.NewReader(snap.Bytes()))); err != nil {
			t.Fatal(err)
		}
		fd.index = snapIndex
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// readEverything lists the artifacts and streams each; an artifact deleted
// or restored away meanwhile is expected, anything else is not.
func readEverything(f *FSM) error {
	arts, err := f.List(storage.Filter{})
	if err != nil {
		return err
	}
	for _, a := range arts {
		k, err := storage.KeyOf(a)
		if err != nil {
			return err
		}
		c, err := f.Open(k)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		got, err := io.ReadAll(c.Reader())
		c.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", a.Path(), err)
		}
		if sum, _, _ := readerDigest(bytes.NewReader(got)); sum != a.Digest {
			return fmt.Errorf("%s: read %d bytes hashing to %s", a.Path(), len(got), sum)
		}
	}
	if _, err := f.Stats(); err != nil {
		return err
	}
	return nil
}

// TestContentHashCoversBlobFiles: the hash changes when a blob file is
// missing or has the wrong length, not only when metadata differs.
func TestContentHashCoversBlobFiles(t *testing.T) {
	f := newFSM(t)
	content := pattern(1, 5000)
	(&feeder{f: f}).ok(t, storeCmds(t, "u1", pathA, content)...)
	want := contentHash(t, f)
	name := f.dirs.blob(digestOf(content))
	if err := os.Truncate(name, 4999); err != nil {
		t.Fatal(err)
	}
	if contentHash(t, f) == want {
		t.Fatal("content hash ignores a blob file cut short")
	}
	if err := os.Remove(name); err != nil {
		t.Fatal(err)
	}
	if contentHash(t, f) == want {
		t.Fatal("content hash ignores a missing blob file")
	}
	if err := f.Repair(digestOf(content), int64(len(content)), bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	if contentHash(t, f) != want {
		t.Fatal("content hash differs after the blob file was repaired")
	}
}
