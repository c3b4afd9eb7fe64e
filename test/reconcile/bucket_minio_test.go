package reconcile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/sourceraft/sourceraft/internal/testenv"
)

// The root credentials of the test MinIO server.
const (
	bucketMinioUser     = "sourceraft-admin"
	bucketMinioPassword = "sourceraft-secret-key"
)

// bucketMinio is a real MinIO server (bin/minio, built by `make minio-bin`
// from the Go module proxy) on loopback, started once per test binary by
// the first test that needs it. It runs with Pdeathsig, so it dies with the
// test binary; its data directory is named after the test binary's pid and
// swept by a later run once that pid is gone.
type bucketMinio struct {
	// Endpoint is host:port, as in spec.endpoint (plain HTTP: spec.insecure).
	Endpoint string
	// Client is an admin client for setting up buckets and objects.
	Client *minio.Client
}

var (
	bucketMinioOnce sync.Once
	bucketMinioSrv  *bucketMinio
	bucketMinioErr  error
)

// minioServer returns the shared MinIO server, starting it on first use.
// A missing binary fails the test with the command that builds it.
func minioServer(t *testing.T) *bucketMinio {
	t.Helper()
	bucketMinioOnce.Do(func() { bucketMinioSrv, bucketMinioErr = startBucketMinio() })
	if bucketMinioErr != nil {
		t.Fatal(bucketMinioErr)
	}
	return bucketMinioSrv
}

func startBucketMinio() (*bucketMinio, error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(root, "bin", "minio")
	if fi, err := os.Stat(bin); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("%s is missing or not executable: run `make minio-bin` "+
			"(builds the MinIO server from the Go module proxy into bin/)", bin)
	}
	sweepBucketMinioDirs()
	dataDir := bucketMinioDir(os.Getpid())
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	consoleAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(dataDir, "minio.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "server", filepath.Join(dataDir, "data"), "--address", addr, "--console-address", consoleAddr, "--quiet")
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+bucketMinioUser, "MINIO_ROOT_PASSWORD="+bucketMinioPassword,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/minio/health/live")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case err := <-exited:
			log, _ := os.ReadFile(logFile.Name())
			return nil, fmt.Errorf("minio exited before becoming live: %v\n%s", err, log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			log, _ := os.ReadFile(logFile.Name())
			return nil, fmt.Errorf("minio not live at %s after 60s\n%s", addr, log)
		}
	}
	c, err := minio.New(addr, &minio.Options{Creds: credentials.NewStaticV4(bucketMinioUser, bucketMinioPassword, "")})
	if err != nil {
		return nil, err
	}
	return &bucketMinio{Endpoint: addr, Client: c}, nil
}

// bucketMinioDirPrefix names the MinIO data directories in os.TempDir().
const bucketMinioDirPrefix = "sourceraft-reconcile-minio-"

// bucketMinioDir is the data directory of the MinIO server of the test
// binary with pid.
func bucketMinioDir(pid int) string {
	return filepath.Join(os.TempDir(), bucketMinioDirPrefix+strconv.Itoa(pid))
}

// sweepBucketMinioDirs removes the data directories of earlier test
// binaries that are no longer running.
func sweepBucketMinioDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), bucketMinioDirPrefix+"*"))
	for _, d := range dirs {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), bucketMinioDirPrefix))
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(d)
		}
	}
}

// newBucket creates a bucket with a name unique to the test and uploads
// objects (key → content) into it.
func (m *bucketMinio) newBucket(t *testing.T, objects map[string]string) string {
	t.Helper()
	name := "t-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if err := m.Client.MakeBucket(context.Background(), name, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("make bucket %s: %v", name, err)
	}
	m.put(t, name, objects)
	return name
}

// put uploads objects (key → content) into bucket.
func (m *bucketMinio) put(t *testing.T, bucket string, objects map[string]string) {
	t.Helper()
	for key, content := range objects {
		if _, err := m.Client.PutObject(context.Background(), bucket, key, bytes.NewReader([]byte(content)), int64(len(content)), minio.PutObjectOptions{}); err != nil {
			t.Fatalf("put %s/%s: %v", bucket, key, err)
		}
	}
}

// remove deletes objects from bucket.
func (m *bucketMinio) remove(t *testing.T, bucket string, keys ...string) {
	t.Helper()
	for _, key := range keys {
		if err := m.Client.RemoveObject(context.Background(), bucket, key, minio.RemoveObjectOptions{}); err != nil {
			t.Fatalf("remove %s/%s: %v", bucket, key, err)
		}
	}
}

// putErr uploads one object and returns the server's answer.
func (m *bucketMinio) putErr(bucket, key, content string) error {
	_, err := m.Client.PutObject(context.Background(), bucket, key, bytes.NewReader([]byte(content)), int64(len(content)), minio.PutObjectOptions{})
	return err
}
