package raftstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/sourceraft/sourceraft/fsm"
	"github.com/sourceraft/sourceraft/internal/minioserver"
	"github.com/sourceraft/sourceraft/s3store"
	"github.com/sourceraft/sourceraft/storage"
)

// remoteCluster is a test cluster whose nodes keep blob bytes in one
// bucket of a real MinIO server, each through its own cache.
type remoteCluster struct {
	*testCluster
	srv    *minioserver.Server
	bucket string
	stores []*s3store.Store
}

func s3Config(t *testing.T, srv *minioserver.Server, bucket string) s3store.Config {
	t.Helper()
	t.Setenv("AWS_ACCESS_KEY_ID", minioserver.User)
	t.Setenv("AWS_SECRET_ACCESS_KEY", minioserver.Password)
	return s3store.Config{Endpoint: srv.Endpoint, Bucket: bucket, Insecure: true, PathStyle: true,
		Prefix: "sourceraft/", CacheDir: t.TempDir(), CacheSize: 64 << 20}
}

func newRemoteCluster(t *testing.T, srv *minioserver.Server, tweak func(*Config)) *remoteCluster {
	t.Helper()
	rc := &remoteCluster{srv: srv, bucket: srv.NewBucket(t, nil)}
	rc.testCluster = newTestCluster(t, 3, func(c *Config) {
		s, err := s3store.New(context.Background(), s3Config(t, srv, rc.bucket))
		if err != nil {
			t.Fatal(err)
		}
		rc.stores = append(rc.stores, s)
		c.Blobs = s
		c.UploadTTL = time.Hour
		if tweak != nil {
			tweak(c)
		}
	})
	return rc
}

// objects lists the bucket's keys.
func (rc *remoteCluster) objects(t *testing.T) []string {
	t.Helper()
	var keys []string
	for o := range rc.srv.Client.ListObjects(context.Background(), rc.bucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		keys = append(keys, o.Key)
	}
	return keys
}

func blobFiles(t *testing.T, nd *Node) int {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(nd.cfg.Dir, "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

func TestRemoteStoreServesFromEveryNode(t *testing.T) {
	rc := newRemoteCluster(t, minioserver.Shared(t), nil)
	_, l := rc.leader()
	ctx := context.Background()
	big, small := randomBytes(1, 3*storage.MaxChunkSize+77), randomBytes(2, 500)
	a, b := art("big", "a.tar.gz"), art("small", "b.tar.gz")
	logBefore := l.raft.LastIndex()
	for _, x := range []struct {
		a    *storage.Artifact
		data []byte
	}{{&a, big}, {&b, small}} {
		if err := l.Store(ctx, x.a, bytes.NewReader(x.data)); err != nil {
			t.Fatal(err)
		}
	}
	// Two commits, no chunks: the bytes went to the bucket, not the log.
	if got := l.raft.LastIndex() - logBefore; got != 2 {
		t.Errorf("storing two artifacts took %d log entries, want 2 commits", got)
	}
	rc.converge()
	for _, nd := range rc.nodes {
		if !bytes.Equal(readAll(t, nd, a), big) || !bytes.Equal(readAll(t, nd, b), small) {
			t.Fatalf("%s serves other bytes", nd.cfg.NodeID)
		}
		if n := blobFiles(t, nd); n != 0 {
			t.Errorf("%s holds %d blob files", nd.cfg.NodeID, n)
		}
		if st, _ := nd.fsm.Stats(); st.RemoteBlobs != 2 {
			t.Errorf("%s: %d remote blobs, want 2", nd.cfg.NodeID, st.RemoteBlobs)
		}
	}
	want := []string{rc.stores[0].Key(a.Digest), rc.stores[0].Key(b.Digest)}
	if got := rc.objects(t); !sameSet(got, want) {
		t.Fatalf("bucket holds %v, want %v", got, want)
	}
	obj, err := rc.srv.Client.GetObject(ctx, rc.bucket, want[0], minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(obj); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("object of %s: %d bytes, %v", a.Path(), len(got), err)
	}

	// A truncated body commits nothing and leaves nothing in the bucket.
	cut := art("cut", "c.tar.gz")
	err = l.Store(ctx, &cut, io.MultiReader(bytes.NewReader(big[:1000]), errReader{io.ErrUnexpectedEOF}))
	if !errors.Is(err, storage.ErrIncomplete) {
		t.Fatalf("truncated store: %v", err)
	}
	if got := rc.objects(t); len(got) != 2 {
		t.Fatalf("bucket holds %v after a truncated upload", got)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func sameSet(a, b []string) bool {
	return strings.Join(sortedCopy(a), "\n") == strings.Join(sortedCopy(b), "\n")
}

// Released objects go only after their delete committed; objects and
// multipart uploads nothing committed are swept.
func TestRemoteGarbageAndOrphans(t *testing.T) {
	rc := newRemoteCluster(t, minioserver.Shared(t), nil)
	_, l := rc.leader()
	ctx := context.Background()
	keep, drop := art("keep", "a.tar.gz"), art("drop", "b.tar.gz")
	for i, x := range []*storage.Artifact{&keep, &drop} {
		if err := l.Store(ctx, x, bytes.NewReader(randomBytes(int64(10+i), 70<<10))); err != nil {
			t.Fatal(err)
		}
	}
	// A leader that died between its Put and its commit left an object,
	// and one that died mid-Put an incomplete multipart upload.
	orphan := randomBytes(12, 1000)
	orphanDigest := digestOf(orphan)
	if err := rc.stores[0].Put(ctx, orphanDigest, int64(len(orphan)), bytes.NewReader(orphan)); err != nil {
		t.Fatal(err)
	}
	core := minio.Core{Client: rc.srv.Client}
	if _, err := core.NewMultipartUpload(ctx, rc.bucket, rc.stores[0].Key(digestOf(randomBytes(13, 10))), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}

	if err := l.Delete(ctx, drop); err != nil {
		t.Fatal(err)
	}
	rc.converge()
	for _, nd := range rc.nodes {
		if p := nd.fsm.BlobPlace(drop.Digest); p != fsm.Garbage {
			t.Fatalf("%s: released blob at place %d, want garbage", nd.cfg.NodeID, p)
		}
	}
	if err := l.SweepBlobStore(ctx, true); err != nil {
		t.Fatal(err)
	}
	rc.converge()
	want := []string{rc.stores[0].Key(keep.Digest)}
	if got := rc.objects(t); !sameSet(got, want) {
		t.Fatalf("bucket holds %v after the sweep, want %v", got, want)
	}
	var incomplete int
	for u := range rc.srv.Client.ListIncompleteUploads(ctx, rc.bucket, "", true) {
		if u.Err != nil {
			t.Fatal(u.Err)
		}
		incomplete++
	}
	if incomplete != 0 {
		t.Fatalf("%d incomplete multipart uploads after the sweep", incomplete)
	}
	for _, nd := range rc.nodes {
		if st, _ := nd.fsm.Stats(); st.GarbageBlobs != 0 || st.RemoteBlobs != 1 {
			t.Fatalf("%s: stats %+v after the sweep", nd.cfg.NodeID, st)
		}
	}
	if !bytes.Equal(readAll(t, rc.nodes[2], keep), randomBytes(10, 70<<10)) {
		t.Fatal("the kept artifact changed")
	}
}

// holdingStore, once armed, blocks one Put after writing its object, as a
// leader does that is killed between its Put and its commit.
type holdingStore struct {
	BlobStore
	armed   atomic.Bool
	written chan struct{}
	release chan struct{}
}

func (h *holdingStore) Put(ctx context.Context, digest string, size int64, r io.ReaderAt) error {
	err := h.BlobStore.Put(ctx, digest, size, r)
	if h.armed.CompareAndSwap(true, false) {
		close(h.written)
		<-h.release
	}
	return err
}

// A leader lost between writing an object and committing it: the next
// leader sweeps the object, and everything committed stays.
func TestRemoteLeaderLostMidUpload(t *testing.T) {
	srv := minioserver.Shared(t)
	var holds []*holdingStore
	rc := newRemoteCluster(t, srv, func(c *Config) {
		h := &holdingStore{BlobStore: c.Blobs, written: make(chan struct{}), release: make(chan struct{})}
		holds = append(holds, h)
		c.Blobs = h
	})
	li, l := rc.leader()
	ctx := context.Background()
	committed := art("committed", "a.tar.gz")
	if err := l.Store(ctx, &committed, bytes.NewReader(randomBytes(20, 5000))); err != nil {
		t.Fatal(err)
	}
	holds[li].armed.Store(true)
	lost := art("lost", "b.tar.gz")
	stored := make(chan error, 1)
	go func() { stored <- l.Store(ctx, &lost, bytes.NewReader(randomBytes(21, 90<<10))) }()
	select {
	case <-holds[li].written:
	case <-time.After(20 * time.Second):
		t.Fatal("the upload never reached the bucket")
	}
	if len(rc.objects(t)) != 2 {
		t.Fatalf("bucket holds %v mid-upload", rc.objects(t))
	}
	rc.stop(li)
	close(holds[li].release)
	if err := <-stored; err == nil {
		t.Fatal("the upload of a stopped leader committed")
	}
	_, l2 := rc.leader()
	// The new leader sweeps on gaining leadership; wait for it.
	want := []string{rc.stores[0].Key(committed.Digest)}
	deadline := time.Now().Add(20 * time.Second)
	for !sameSet(rc.objects(t), want) {
		if time.Now().After(deadline) {
			t.Fatalf("bucket holds %v, want only %v", rc.objects(t), want)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !bytes.Equal(readAll(t, l2, committed), randomBytes(20, 5000)) {
		t.Fatal("the committed artifact changed")
	}
	if ok, _ := l2.Exists(ctx, lost); ok {
		t.Fatal("the lost upload is committed")
	}
}

// A cluster that kept blobs as files moves them to the bucket when it
// restarts with one; every node serves them throughout.
func TestRemoteMigration(t *testing.T) {
	srv := minioserver.Shared(t)
	tc := newTestCluster(t, 3, nil)
	_, l := tc.leader()
	ctx := context.Background()
	var arts []storage.Artifact
	for i := range 4 {
		a := art("m"+string(rune('a'+i)), "a.tar.gz")
		if err := l.Store(ctx, &a, bytes.NewReader(randomBytes(int64(30+i), 40<<10*(i+1)))); err != nil {
			t.Fatal(err)
		}
		arts = append(arts, a)
	}
	tc.converge()
	bucket := srv.NewBucket(t, nil)
	for i := range tc.nodes {
		tc.stop(i)
		s, err := s3store.New(ctx, s3Config(t, srv, bucket))
		if err != nil {
			t.Fatal(err)
		}
		tc.cfgs[i].Blobs = s
	}
	for i := range tc.nodes {
		tc.start(i)
	}
	// Readers on every node while the blobs move: none may fail.
	stopReads := make(chan struct{})
	var reads sync.WaitGroup
	for _, nd := range tc.nodes {
		reads.Add(1)
		go func() {
			defer reads.Done()
			for k := 0; k < 100000; k++ {
				select {
				case <-stopReads:
					return
				default:
				}
				a := arts[k%len(arts)]
				rc, err := nd.Retrieve(ctx, a)
				if err == nil {
					_, err = io.Copy(io.Discard, rc)
					rc.Close()
				}
				if err != nil {
					t.Errorf("%s: read %s during the move: %v", nd.cfg.NodeID, a.Path(), err)
					return
				}
			}
		}()
	}
	_, l = tc.leader()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := l.fsm.Stats()
		if err == nil && st.RemoteBlobs == len(arts) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v, %v: blobs not moved", st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	tc.converge()
	close(stopReads)
	reads.Wait()
	for _, nd := range tc.nodes {
		if n := blobFiles(t, nd); n != 0 {
			t.Errorf("%s holds %d blob files after the move", nd.cfg.NodeID, n)
		}
		for i, a := range arts {
			if !bytes.Equal(readAll(t, nd, a), randomBytes(int64(30+i), 40<<10*(i+1))) {
				t.Fatalf("%s serves other bytes for %s", nd.cfg.NodeID, a.Path())
			}
		}
	}
	if got := len(objectsOf(t, srv, bucket)); got != len(arts) {
		t.Fatalf("bucket holds %d objects, want %d", got, len(arts))
	}
}

func objectsOf(t *testing.T, srv *minioserver.Server, bucket string) []string {
	return (&remoteCluster{srv: srv, bucket: bucket}).objects(t)
}

// With the bucket away, stores fail with the store's error, readiness says
// so, and nothing committed is lost; when it is back, stores resume.
func TestRemoteBucketAway(t *testing.T) {
	srv := minioserver.Start(t, minioserver.Options{})
	rc := newRemoteCluster(t, srv, nil)
	_, l := rc.leader()
	ctx := context.Background()
	before := art("before", "a.tar.gz")
	data := randomBytes(40, 100<<10)
	if err := l.Store(ctx, &before, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	rc.converge()
	// Read once through the leader's cache: it keeps serving it.
	readAll(t, l, before)

	srv.Stop(t)
	during := art("during", "b.tar.gz")
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := l.Store(sctx, &during, bytes.NewReader(randomBytes(41, 1000)))
	cancel()
	if err == nil || !strings.Contains(err.Error(), "object store") {
		t.Fatalf("store with the bucket away: %v", err)
	}
	deadline := time.Now().Add(3 * blobStoreCheckInterval)
	for l.Ready() == nil {
		if time.Now().After(deadline) {
			t.Fatal("ready with the bucket away")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := l.Ready(); !strings.Contains(err.Error(), "object store") {
		t.Fatalf("readiness: %v", err)
	}
	if !bytes.Equal(readAll(t, l, before), data) {
		t.Fatal("a cached artifact is not served with the bucket away")
	}

	srv.Restart(t)
	deadline = time.Now().Add(3 * blobStoreCheckInterval)
	for l.Ready() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("not ready with the bucket back: %v", l.Ready())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := l.Store(ctx, &during, bytes.NewReader(randomBytes(41, 1000))); err != nil {
		t.Fatal(err)
	}
	rc.converge()
	for _, nd := range rc.nodes {
		if !bytes.Equal(readAll(t, nd, before), data) {
			t.Fatalf("%s lost a committed artifact", nd.cfg.NodeID)
		}
	}
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}
