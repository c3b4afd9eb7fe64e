// Package minioserver runs a real MinIO server (bin/minio, built by `make
// minio-bin` from the Go module proxy) on loopback for tests, one per test
// binary, started by the first test that needs it, and servers a test
// starts for itself with other settings (an OpenID provider, TLS). They
// run with Pdeathsig, so they die with the test binary; the shared one's
// data directory is named after the test binary's pid and swept by a
// later run once that pid is gone. VerifySessionToken tells who the
// temporary credentials of a server's STS were issued to.
package minioserver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
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
	"github.com/minio/minio-go/v7/pkg/signer"

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
	// Endpoint is host:port, as in a Bucket's spec.endpoint (plain HTTP
	// unless Secure: spec.insecure).
	Endpoint string
	// Secure: the server speaks HTTPS (Options.CertsDir holds its key).
	Secure bool
	// Client is an admin client for setting up buckets and objects.
	Client *minio.Client
	// admin carries the admin API's requests (AddPolicy), signed for
	// region.
	admin  *http.Client
	region string
	// logFile holds the server's output, for failure messages.
	logFile string
	// dir and opts started the server of Start, and proc runs it, so
	// Stop and Restart can bring it down and back on the same address.
	dir    string
	opts   Options
	proc   *exec.Cmd
	exited chan struct{}
}

// Options configure a server of a test's own (Start); the shared one
// has none.
type Options struct {
	// Env is added to the server's environment (MINIO_IDENTITY_OPENID_*,
	// say).
	Env []string
	// Region is the server's (MINIO_SITE_REGION); requests signed for
	// another are refused. Empty is MinIO's default, us-east-1.
	Region string
	// CertsDir is the server's --certs-dir: with public.crt and
	// private.key in it the server speaks HTTPS, and it trusts the CAs in
	// its CAs/ subdirectory when it calls out (to an OpenID provider).
	CertsDir string
	// RootCAs verify the server's certificate when it speaks HTTPS.
	RootCAs *x509.CertPool
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
	once.Do(func() {
		sweepDirs()
		var dir string
		if dir, errSrv = dataDir(os.Getpid()); errSrv == nil {
			shared, errSrv = start(dir, "", Options{}, nil)
		}
	})
	if errSrv != nil {
		t.Fatal(errSrv)
	}
	return shared
}

// Start starts a server of the test's own with o, its data in a
// temporary directory; it is killed when the test ends.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	s, err := StartIn(t.TempDir(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.kill)
	return s
}

// StartIn starts a server with its data and log under dir, for programs
// that are not tests (the benchmarks); Kill stops it.
func StartIn(dir string, o Options) (*Server, error) {
	var cmd *exec.Cmd
	s, err := start(dir, "", o, &cmd)
	if err != nil {
		if cmd != nil {
			_ = cmd.Process.Kill()
		}
		return nil, err
	}
	s.dir, s.opts, s.proc = dir, o, cmd
	return s, nil
}

// Kill stops a server of StartIn.
func (s *Server) Kill() { s.kill() }

func (s *Server) kill() {
	if s.proc != nil {
		_ = s.proc.Process.Kill()
		<-s.exited
		s.proc = nil
	}
}

// Stop kills a server of Start, as a bucket that goes away; Restart
// brings it back.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if s.dir == "" {
		t.Fatal("minioserver: only a server of Start can stop")
	}
	s.kill()
}

// Restart starts a stopped server of Start again, on the same address
// with the same data.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	var cmd *exec.Cmd
	again, err := start(s.dir, s.Endpoint, s.opts, &cmd)
	if err != nil {
		if cmd != nil {
			_ = cmd.Process.Kill()
		}
		t.Fatal(err)
	}
	s.proc, s.exited = cmd, again.exited
}

// start runs bin/minio with its data and log under dir, on addr (a free
// port when empty); started, when set, receives the process once it runs.
func start(dir, addr string, o Options, started **exec.Cmd) (*Server, error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(root, "bin", "minio")
	if fi, err := os.Stat(bin); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("%s is missing or not executable: run `make minio-bin` "+
			"(builds the MinIO server from the Go module proxy into bin/)", bin)
	}
	if addr == "" {
		if addr, err = freeport.Addr(); err != nil {
			return nil, err
		}
	}
	consoleAddr, err := freeport.Addr()
	if err != nil {
		return nil, err
	}
	logFile, err := os.OpenFile(filepath.Join(dir, "minio.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	args := []string{"server", filepath.Join(dir, "data"), "--address", addr, "--console-address", consoleAddr, "--quiet"}
	if o.CertsDir != "" {
		args = append(args, "--certs-dir", o.CertsDir)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+User, "MINIO_ROOT_PASSWORD="+Password,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off")
	if o.Region != "" {
		cmd.Env = append(cmd.Env, "MINIO_SITE_REGION="+o.Region)
	}
	cmd.Env = append(cmd.Env, o.Env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	if started != nil {
		*started = cmd
	}
	exited := make(chan error, 1)
	waited := make(chan struct{})
	go func() { exited <- cmd.Wait(); close(waited) }()

	secure := o.CertsDir != ""
	tr, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, err
	}
	if secure && o.RootCAs != nil {
		tr.TLSClientConfig.RootCAs = o.RootCAs
	}
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	scheme := "http"
	if secure {
		scheme = "https"
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := hc.Get(scheme + "://" + addr + "/minio/health/live")
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
	c, err := minio.New(addr, &minio.Options{Creds: credentials.NewStaticV4(User, Password, ""), Secure: secure, Transport: tr, Region: o.Region})
	if err != nil {
		return nil, err
	}
	return &Server{Endpoint: addr, Secure: secure, Client: c, admin: hc, region: o.Region, logFile: logFile.Name(), exited: waited}, nil
}

// AddPolicy creates (or replaces) the IAM policy name with the policy
// document doc, through MinIO's admin API as the root user. A server that
// is live but has not loaded its IAM yet answers 503: that is retried for
// up to 30 s.
func (s *Server) AddPolicy(ctx context.Context, name, doc string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		status, body, err := s.addPolicy(ctx, name, doc)
		switch {
		case err != nil:
			return fmt.Errorf("add policy %s: %w", name, err)
		case status == http.StatusOK:
			return nil
		case status != http.StatusServiceUnavailable || time.Now().After(deadline):
			log, _ := os.ReadFile(s.logFile)
			return fmt.Errorf("add policy %s: %d: %s\nserver log:\n%s", name, status, body, log)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (s *Server) addPolicy(ctx context.Context, name, doc string) (int, []byte, error) {
	u := *s.Client.EndpointURL()
	u.Path = "/minio/admin/v3/add-canned-policy"
	u.RawQuery = url.Values{"name": {name}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u.String(), strings.NewReader(doc))
	if err != nil {
		return 0, nil, err
	}
	sum := sha256.Sum256([]byte(doc))
	req.Header.Set("X-Amz-Content-Sha256", hex.EncodeToString(sum[:]))
	resp, err := s.admin.Do(signer.SignV4(*req, User, Password, "", s.region))
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, body, err
}

// dirPrefix names the MinIO data directories in os.TempDir().
const dirPrefix = "sourceraft-minio-"

// dataDir creates the data directory of the shared MinIO server of the
// test binary with pid.
func dataDir(pid int) (string, error) {
	d := filepath.Join(os.TempDir(), dirPrefix+strconv.Itoa(pid))
	return d, os.MkdirAll(d, 0o700)
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

// WriteCredentials writes an AWS shared credentials file for the root
// user with secret (Password, or a wrong one) into dir, as a mounted
// Secret would hold it, and returns its path.
func WriteCredentials(dir, secret string) (string, error) {
	path := filepath.Join(dir, "credentials")
	ini := fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", User, secret)
	if err := os.WriteFile(path, []byte(ini), 0o600); err != nil {
		return "", err
	}
	return path, nil
}
