package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"math/rand"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/sourceraft/sourceraft/internal/cluster"
	"github.com/sourceraft/sourceraft/internal/minioserver"
)

// s3Args run replicas with blob bytes in bucket of srv, reading the
// credentials from a file as from a mounted Secret.
func s3Args(t *testing.T, srv *minioserver.Server, bucket, secret string) []string {
	t.Helper()
	creds, err := minioserver.WriteCredentials(t.TempDir(), secret)
	if err != nil {
		t.Fatal(err)
	}
	return []string{"--storage-backend=s3", "--s3-endpoint=" + srv.Endpoint, "--s3-bucket=" + bucket,
		"--s3-insecure", "--s3-path-style", "--s3-credentials-file=" + creds}
}

// The leader SIGKILLed while it writes a blob to the bucket: the next
// leader sweeps what it left (an incomplete multipart upload or an object
// no commit names), and every committed artifact is still served by every
// replica.
func TestS3LeaderKilledMidUpload(t *testing.T) {
	srv := minioserver.Start(t, minioserver.Options{})
	bucket := srv.NewBucket(t, nil)
	c, leader := startCluster(t, 3, s3Args(t, srv, bucket, minioserver.Password), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	committed := randomContent(1, 1<<20)
	const path = "gitrepository/default/app/committed.tar.gz"
	if _, err := c.Put(ctx, leader, path, strings.NewReader(string(committed)), int64(len(committed))); err != nil {
		t.Fatal(err)
	}
	const size = 400 << 20
	put := make(chan error, 1)
	go func() {
		body := io.LimitReader(rand.New(rand.NewSource(2)), size)
		_, err := c.Put(ctx, leader, "gitrepository/default/app/lost.tar.gz", body, size)
		put <- err
	}()
	// Killed once the bucket holds part of the upload.
	deadline := time.Now().Add(90 * time.Second)
	for incompleteUploads(ctx, t, srv, bucket) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the upload never reached the bucket")
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.Kill(leader)
	if err := <-put; err == nil {
		t.Fatal("the upload to a killed leader succeeded")
	}

	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	defer wcancel()
	if _, err := c.WaitLeader(wctx); err != nil {
		t.Fatal(err)
	}
	want := "sha256/" + strings.TrimPrefix(digestOf(committed), "sha256:")
	deadline = time.Now().Add(60 * time.Second)
	for {
		objs := objectKeys(ctx, t, srv, bucket)
		if n := incompleteUploads(ctx, t, srv, bucket); n == 0 && len(objs) == 1 && objs[0] == want {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("bucket holds %v and %d incomplete uploads; want only %s", objs, n, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := c.StartReplica(leader); err != nil {
		t.Fatal(err)
	}
	for i := range c.Replicas {
		waitReady(ctx, t, c, i)
		deadline := time.Now().Add(30 * time.Second)
		for {
			status, d, err := get(ctx, c.ArtifactURL(i, path))
			if err == nil && status == http.StatusOK && d == digestOf(committed) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %s: %d %s %v", c.Replicas[i].ID, path, status, d, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		// 404 once the replica knows its peers lack it too (503 before).
		for {
			status, _, _ := get(ctx, c.ArtifactURL(i, "gitrepository/default/app/lost.tar.gz"))
			if status == http.StatusOK {
				t.Fatalf("%s serves the lost upload", c.Replicas[i].ID)
			}
			if status == http.StatusNotFound {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the lost upload: %d, want 404", c.Replicas[i].ID, status)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

func incompleteUploads(ctx context.Context, t *testing.T, srv *minioserver.Server, bucket string) int {
	t.Helper()
	n := 0
	for u := range srv.Client.ListIncompleteUploads(ctx, bucket, "", true) {
		if u.Err != nil {
			t.Fatal(u.Err)
		}
		n++
	}
	return n
}

func objectKeys(ctx context.Context, t *testing.T, srv *minioserver.Server, bucket string) []string {
	t.Helper()
	var keys []string
	for o := range srv.Client.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		keys = append(keys, o.Key)
	}
	return keys
}

// A missing bucket and refused credentials stop the binary at start with
// the store's message.
func TestBinaryRefusesUnusableBucket(t *testing.T) {
	srv := minioserver.Shared(t)
	bucket := srv.NewBucket(t, nil)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"wrong secret", s3Args(t, srv, bucket, "wrong-secret"), "refused the credentials"},
		{"missing bucket", s3Args(t, srv, "no-such-bucket", minioserver.Password), "does not exist"},
		{"unknown backend", []string{"--storage-backend=disk"}, "want raft or s3"},
	} {
		args := append([]string{"--node-id=a", "--raft-addr=127.0.0.1:0", "--storage-path=" + t.TempDir(), "--raft-insecure",
			"--storage-addr=127.0.0.1:0", "--api-addr=127.0.0.1:0", "--health-addr=127.0.0.1:0", "--metrics-addr=127.0.0.1:0"}, tc.args...)
		out, err := exec.Command(binary, args...).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() == 0 {
			t.Fatalf("%s: started: %v\n%s", tc.name, err, out)
		}
		if !strings.Contains(string(out), tc.want) {
			t.Fatalf("%s: the refusal does not say %q:\n%s", tc.name, tc.want, out)
		}
	}
}

// tarball is a .tar.gz holding deploy/config.yaml, what fluxFetch expects.
func tarball(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	body := []byte("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: s3\n")
	if err := tw.WriteHeader(&tar.Header{Name: "deploy/config.yaml", Mode: 0o644, Size: int64(len(body))}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(body); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Flux's fetcher gets an artifact of the S3 backend from every replica:
// streamed through each replica's cache, then with --storage-presign by
// following the redirect to the pre-signed URL, checking the digest.
func TestS3ServedToFluxInBothModes(t *testing.T) {
	srv := minioserver.Start(t, minioserver.Options{})
	bucket := srv.NewBucket(t, nil)
	args := s3Args(t, srv, bucket, minioserver.Password)
	c, leader := startCluster(t, 3, args, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	content := tarball(t)
	const path = "gitrepository/default/app/artifact.tar.gz"
	res, err := c.Put(ctx, leader, path, bytes.NewReader(content), int64(len(content)))
	if err != nil {
		t.Fatal(err)
	}
	for i := range c.Replicas {
		fluxFetch(ctx, t, c, i, path, res.Digest)
	}

	c.SetArgs(append(args, "--storage-presign=2m"))
	for i := range c.Replicas {
		c.Stop(i)
		if err := c.StartReplica(i); err != nil {
			t.Fatal(err)
		}
	}
	noFollow := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for i := range c.Replicas {
		waitReady(ctx, t, c, i)
		var resp *http.Response
		deadline := time.Now().Add(30 * time.Second)
		for {
			resp, err = noFollow.Get(c.ArtifactURL(i, path))
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusTemporaryRedirect {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: GET %s: %v %v, want a redirect", c.Replicas[i].ID, path, resp, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		loc, err := url.Parse(resp.Header.Get("Location"))
		if err != nil || loc.Host != srv.Endpoint || loc.Query().Get("X-Amz-Signature") == "" {
			t.Fatalf("%s: redirect to %q: want a pre-signed URL of %s", c.Replicas[i].ID, resp.Header.Get("Location"), srv.Endpoint)
		}
		fluxFetch(ctx, t, c, i, path, res.Digest)
	}
}

// waitReady waits up to a minute for replica i's /readyz to answer 200.
func waitReady(ctx context.Context, t *testing.T, c *cluster.Cluster, i int) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		err := c.Ready(ctx, i)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
