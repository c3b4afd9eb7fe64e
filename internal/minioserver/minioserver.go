// Package minioserver runs a real MinIO server (bin/minio, built by `make
// minio-bin` from the Go module proxy) on loopback for tests, one per test
// binary, started by the first test that needs it. It runs with
// Pdeathsig, so it dies with the test binary; its data directory is named
// after the test binary's pid and swept by a later run once that pid is
// gone.
package minioserver

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

	"github.com/sourceraft/sourceraft/internal/freeport"
	"github.com/sourceraft/sourceraft/internal/testenv"
)

// The root credentials of the server.
const (
	User     = "sourceraft-admin"
	Password = "sourceraft-secret-key"
)

// Server is a running MinIO server.
type Server struct {
	// Endpoint is host:port, as in a Bucket's spec.endpoint (plain HTTP:
	// spec.insecure).
	Endpoint string
	// Client is an admin client for setting up buckets and objects.
	Client *minio.Client
}

var (
	once   sync.Once
	shared *Server
	errSrv error
)

// Shared returns the test binary's MinIO server, starting it on first
// use. A missing binary fails the test with the command that builds it.
func Shared(t testing.TB) *Server {
	t.Helper()
	once.Do(func() { shared, errSrv = start() })
	if errSrv != nil {
		t.Fatal(errSrv)
	}
	return shared
}

func start() (*Server, error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(root, "bin", "minio")
	if fi, err := os.Stat(bin); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("%s is missing or not executable: run `make minio-bin` "+
			"(builds the MinIO server from the Go module proxy into bin/)", bin)
	}
	sweepDirs()
	dataDir := dataDir(os.Getpid())
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, err
	}
	addr, err := freeport.Addr()
	if err != nil {
		return nil, err
	}
	consoleAddr, err := freeport.Addr()
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(dataDir, "minio.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "server", filepath.Join(dataDir, "data"), "--address", addr, "--console-address", consoleAddr, "--quiet")
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+User, "MINIO_ROOT_PASSWORD="+Password,
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
	c, err := minio.New(addr, &minio.Options{Creds: credentials.NewStaticV4(User, Password, "")})
	if err != nil {
		return nil, err
	}
	return &Server{Endpoint: addr, Client: c}, nil
}

// dirPrefix names the MinIO data directories in os.TempDir().
const dirPrefix = "sourceraft-minio-"

// dataDir is the data directory of the MinIO server of the test binary
// with pid.
func dataDir(pid int) string {
	return filepath.Join(os.TempDir(), dirPrefix+strconv.Itoa(pid))
}

// sweepDirs removes the data directories of earlier test binaries that
// are no longer running.
func sweepDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, d := range dirs {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), dirPrefix))
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(d)
		}
	}
}

// NewBucket creates a bucket with a name unique to the test and uploads
// objects (key → content) into it.
func (s *Server) NewBucket(t testing.TB, objects map[string]string) string {
	t.Helper()
	name := "t-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if err := s.Client.MakeBucket(context.Background(), name, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("make bucket %s: %v", name, err)
	}
	s.Put(t, name, objects)
	return name
}

// Put uploads objects (key → content) into bucket.
func (s *Server) Put(t testing.TB, bucket string, objects map[string]string) {
	t.Helper()
	for key, content := range objects {
		if err := s.PutErr(bucket, key, content); err != nil {
			t.Fatalf("put %s/%s: %v", bucket, key, err)
		}
	}
}

// Remove deletes objects from bucket.
func (s *Server) Remove(t testing.TB, bucket string, keys ...string) {
	t.Helper()
	for _, key := range keys {
		if err := s.Client.RemoveObject(context.Background(), bucket, key, minio.RemoveObjectOptions{}); err != nil {
			t.Fatalf("remove %s/%s: %v", bucket, key, err)
		}
	}
}

// PutErr uploads one object and returns the server's answer.
func (s *Server) PutErr(bucket, key, content string) error {
	_, err := s.Client.PutObject(context.Background(), bucket, key, bytes.NewReader([]byte(content)), int64(len(content)), minio.PutObjectOptions{})
	return err
}
