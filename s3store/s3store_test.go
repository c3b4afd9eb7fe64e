package s3store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/sourceraft/sourceraft/internal/freeport"
	"github.com/sourceraft/sourceraft/internal/minioserver"
	"github.com/sourceraft/sourceraft/storage"
)

func blob(seed uint64, n int) ([]byte, string) {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 0))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	sum := sha256.Sum256(b)
	return b, "sha256:" + hex.EncodeToString(sum[:])
}

func config(t *testing.T, srv *minioserver.Server, bucket string) Config {
	t.Helper()
	t.Setenv("AWS_ACCESS_KEY_ID", minioserver.User)
	t.Setenv("AWS_SECRET_ACCESS_KEY", minioserver.Password)
	return Config{Endpoint: srv.Endpoint, Bucket: bucket, Insecure: true, PathStyle: true, Prefix: "p/",
		CacheDir: t.TempDir(), CacheSize: 1 << 20}
}

func newStore(t *testing.T, cfg Config) *Store {
	t.Helper()
	s, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func readFile(t *testing.T, fh *os.File) []byte {
	t.Helper()
	defer fh.Close()
	b, err := io.ReadAll(fh)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPutOpenMultipart(t *testing.T) {
	srv := minioserver.Shared(t)
	cfg := config(t, srv, srv.NewBucket(t, nil))
	cfg.PartSize = 5 << 20 // S3's smallest part: 20 MiB is four of them
	cfg.CacheSize = 64 << 20
	s := newStore(t, cfg)
	ctx := context.Background()
	data, digest := blob(1, 20<<20+123)
	if err := s.Put(ctx, digest, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	info, err := srv.Client.StatObject(ctx, cfg.Bucket, "p/sha256/"+strings.TrimPrefix(digest, "sha256:"), minio.StatObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// A multipart ETag ends in -<parts>.
	if !strings.HasSuffix(info.ETag, "-5") {
		t.Errorf("object ETag %q: not written in 5 parts", info.ETag)
	}
	if size, err := s.Stat(ctx, digest); err != nil || size != int64(len(data)) {
		t.Fatalf("stat: %d, %v", size, err)
	}
	for i := range 2 {
		fh, err := s.Open(ctx, digest, int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(readFile(t, fh), data) {
			t.Fatalf("open %d: other bytes", i)
		}
	}
	if st := s.CacheStats(); st.Misses != 1 || st.Hits != 1 || st.Entries != 1 || st.Bytes != int64(len(data)) {
		t.Fatalf("cache stats %+v: want one miss then one hit", st)
	}
	// A second store on the same directory finds the cached copy.
	again := newStore(t, cfg)
	fh, err := again.Open(ctx, digest, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	fh.Close()
	if st := again.CacheStats(); st.Hits != 1 || st.Misses != 0 {
		t.Fatalf("cache after restart %+v: want a hit", st)
	}
	if _, err := s.Stat(ctx, "sha256:"+strings.Repeat("0", 64)); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("stat of a missing object: %v", err)
	}
}

func TestOpenVerifiesAndEvicts(t *testing.T) {
	srv := minioserver.Shared(t)
	cfg := config(t, srv, srv.NewBucket(t, nil))
	cfg.CacheSize = 250 << 10
	s := newStore(t, cfg)
	ctx := context.Background()

	// An object that does not hash to its name is refused, not cached.
	good, digest := blob(2, 1000)
	bad := append([]byte(nil), good...)
	bad[10] ^= 1
	if err := s.Put(ctx, digest, int64(len(bad)), bytes.NewReader(bad)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open(ctx, digest, int64(len(good))); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("open of a corrupt object: %v", err)
	}
	if st := s.CacheStats(); st.Entries != 0 {
		t.Fatalf("a corrupt object was cached: %+v", st)
	}
	if err := s.Put(ctx, digest, int64(len(good)), bytes.NewReader(good)); err != nil {
		t.Fatal(err)
	}
	if fh, err := s.Open(ctx, digest, int64(len(good))); err != nil || !bytes.Equal(readFile(t, fh), good) {
		t.Fatalf("open after the repair: %v", err)
	}

	// Three blobs of 100 KiB in 250 KiB: the least recently used goes.
	var digests []string
	for i := range 3 {
		data, d := blob(uint64(10+i), 100<<10)
		if err := s.Put(ctx, d, int64(len(data)), bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		digests = append(digests, d)
		fh, err := s.Open(ctx, d, int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		fh.Close()
		if i == 1 { // use the first again: the second is now the oldest
			if fh, err := s.Open(ctx, digests[0], 100<<10); err == nil {
				fh.Close()
			}
		}
	}
	st := s.CacheStats()
	if st.Bytes > cfg.CacheSize {
		t.Fatalf("cache holds %d bytes, limit %d", st.Bytes, cfg.CacheSize)
	}
	files, _ := os.ReadDir(cfg.CacheDir)
	var names []string
	for _, f := range files {
		names = append(names, f.Name())
	}
	if strings.Contains(strings.Join(names, " "), strings.TrimPrefix(digests[1], "sha256:")) {
		t.Fatalf("the least recently used blob is still cached: %v", names)
	}
	// A blob larger than the cache is served but not kept.
	huge, hd := blob(20, 300<<10)
	if err := s.Put(ctx, hd, int64(len(huge)), bytes.NewReader(huge)); err != nil {
		t.Fatal(err)
	}
	fh, err := s.Open(ctx, hd, int64(len(huge)))
	if err != nil || !bytes.Equal(readFile(t, fh), huge) {
		t.Fatalf("open of a blob larger than the cache: %v", err)
	}
	if after, _ := os.ReadDir(cfg.CacheDir); len(after) != len(files) {
		t.Fatalf("cache directory went from %d to %d files for a blob it cannot hold", len(files), len(after))
	}
}

func TestConcurrentMissesDownloadOnce(t *testing.T) {
	srv := minioserver.Shared(t)
	cfg := config(t, srv, srv.NewBucket(t, nil))
	s := newStore(t, cfg)
	ctx := context.Background()
	data, digest := blob(3, 500<<10)
	if err := s.Put(ctx, digest, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fh, err := s.Open(ctx, digest, int64(len(data)))
			if err == nil {
				got, _ := io.ReadAll(fh)
				fh.Close()
				if !bytes.Equal(got, data) {
					err = errors.New("other bytes")
				}
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if st := s.CacheStats(); st.Misses != 1 {
		t.Fatalf("%d downloads for 8 concurrent reads of one blob", st.Misses)
	}
}

func TestPresignWalkDeleteSweep(t *testing.T) {
	srv := minioserver.Shared(t)
	cfg := config(t, srv, srv.NewBucket(t, map[string]string{"p/other": "not a blob", "elsewhere": "x"}))
	s := newStore(t, cfg)
	ctx := context.Background()
	data, digest := blob(4, 3000)
	if err := s.Put(ctx, digest, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	u, err := s.Presign(ctx, digest, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(u.String())
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, data) {
		t.Fatalf("presigned GET: %d, %d bytes", resp.StatusCode, len(got))
	}
	// Pre-signed URLs carry whole seconds: wait past the expiry.
	time.Sleep(3500 * time.Millisecond)
	if resp, err := http.Get(u.String()); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("expired presigned GET: %v %v", resp.Status, err)
	}

	var walked []string
	if err := s.Walk(ctx, func(d string, size int64, _ time.Time) error {
		walked = append(walked, fmt.Sprint(d, size))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(walked) != 1 || walked[0] != fmt.Sprint(digest, len(data)) {
		t.Fatalf("walk: %v", walked)
	}
	if err := s.Delete(ctx, digest); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, digest); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := s.Stat(ctx, digest); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("stat after delete: %v", err)
	}

	core := minio.Core{Client: srv.Client}
	_, other := blob(5, 10)
	if _, err := core.NewMultipartUpload(ctx, cfg.Bucket, s.Key(other), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := core.NewMultipartUpload(ctx, cfg.Bucket, "elsewhere-upload", minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.SweepIncomplete(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("sweep of uploads younger than an hour: %d, %v", n, err)
	}
	if n, err := s.SweepIncomplete(ctx, 0); err != nil || n != 1 {
		t.Fatalf("sweep: %d, %v; want the one upload under the prefix", n, err)
	}
}

func TestServerSideEncryption(t *testing.T) {
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i)
	}
	srv := minioserver.Start(t, minioserver.Options{Env: []string{"MINIO_KMS_SECRET_KEY=sourceraft-key:" + base64.StdEncoding.EncodeToString(key)}})
	ctx := context.Background()
	for _, tc := range []struct{ sse, want string }{{"s3", "AES256"}, {"kms:sourceraft-key", "aws:kms"}} {
		cfg := config(t, srv, srv.NewBucket(t, nil))
		cfg.SSE = tc.sse
		s := newStore(t, cfg)
		data, digest := blob(6, 2000)
		if err := s.Put(ctx, digest, int64(len(data)), bytes.NewReader(data)); err != nil {
			t.Fatalf("%s: %v", tc.sse, err)
		}
		info, err := srv.Client.StatObject(ctx, cfg.Bucket, s.Key(digest), minio.StatObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Metadata.Get("X-Amz-Server-Side-Encryption"); got != tc.want {
			t.Errorf("--s3-sse=%s: object encryption %q, want %q", tc.sse, got, tc.want)
		}
		if fh, err := s.Open(ctx, digest, int64(len(data))); err != nil || !bytes.Equal(readFile(t, fh), data) {
			t.Fatalf("%s: read back: %v", tc.sse, err)
		}
	}
	if _, err := ParseSSE("aes"); err == nil {
		t.Fatal("--s3-sse=aes accepted")
	}
}

func TestClearErrors(t *testing.T) {
	srv := minioserver.Start(t, minioserver.Options{})
	bucket := srv.NewBucket(t, nil)
	ctx := context.Background()

	missing := config(t, srv, "no-such-bucket")
	if _, err := New(ctx, missing); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("missing bucket: %v", err)
	}
	wrong := config(t, srv, bucket)
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong")
	if _, err := New(ctx, wrong); err == nil || !strings.Contains(err.Error(), "refused the credentials") {
		t.Fatalf("wrong secret: %v", err)
	}
	creds, err := minioserver.WriteCredentials(t.TempDir(), minioserver.Password)
	if err != nil {
		t.Fatal(err)
	}
	fromFile := config(t, srv, bucket)
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	fromFile.CredentialsFile = creds
	s := newStore(t, fromFile)
	if _, err := New(ctx, config(t, srv, bucket)); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	if _, err := New(ctx, Config{Endpoint: srv.Endpoint, Bucket: bucket, CacheDir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "no S3 credentials") {
		t.Fatalf("no credentials: %v", err)
	}

	// Unreachable: New still opens (the cache serves), Check says why.
	addr, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	away := config(t, srv, bucket)
	away.Endpoint = addr
	gone := newStore(t, away)
	if err := gone.Check(ctx); err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("unreachable endpoint: %v", err)
	}

	if err := s.Check(ctx); err != nil {
		t.Fatal(err)
	}
	srv.Stop(t)
	if err := s.Check(ctx); err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("check with the server stopped: %v", err)
	}
	srv.Restart(t)
	if err := s.Check(ctx); err != nil {
		t.Fatalf("check after the restart: %v", err)
	}
}
