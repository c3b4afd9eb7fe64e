package reconcile

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// gitHTTPBackend is git's own smart-HTTP server, run as CGI.
const gitHTTPBackend = "/usr/lib/git-core/git-http-backend"

// Credentials the git server accepts under /private/.
const (
	gitUser  = "flux"
	gitPass  = "s3cret-pass"
	gitToken = "s3cret-token"
)

// gitServer serves the bare repositories under root over smart HTTP on
// loopback: /public/<name>.git to anyone, /private/<name>.git only with
// basic auth (gitUser/gitPass) or a bearer token (gitToken). Requests
// under /slow/ hang, for timeouts.
type gitServer struct {
	root string
	srv  *httptest.Server
	// backend serves the repositories under root without any check, for
	// servers in front of the same repositories (githubapp_test.go).
	backend http.Handler
}

func startGitServer() (*gitServer, error) {
	if _, err := os.Stat(gitHTTPBackend); err != nil {
		return nil, fmt.Errorf("git http-backend is required: %w", err)
	}
	root, err := os.MkdirTemp("", "reconcile-git-")
	if err != nil {
		return nil, err
	}
	backend := &cgi.Handler{
		Path:   gitHTTPBackend,
		Env:    []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1", "GIT_CONFIG_NOSYSTEM=1", "HOME=" + root},
		Stderr: io.Discard,
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// /slow/ never answers within a test's Git timeout.
		if strings.HasPrefix(r.URL.Path, "/slow/") {
			select {
			case <-r.Context().Done():
			case <-time.After(30 * time.Second):
			}
			return
		}
		if strings.HasPrefix(r.URL.Path, "/private/") && !authorized(r) {
			w.Header().Set("WWW-Authenticate", `Basic realm="git"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		backend.ServeHTTP(w, r)
	})
	return &gitServer{root: root, srv: httptest.NewServer(h), backend: backend}, nil
}

func authorized(r *http.Request) bool {
	if u, p, ok := r.BasicAuth(); ok {
		return u == gitUser && p == gitPass
	}
	return r.Header.Get("Authorization") == "Bearer "+gitToken
}

func (s *gitServer) Close() {
	s.srv.Close()
	os.RemoveAll(s.root)
}

// gitRepo is a working tree whose every change is pushed to its bare
// repository on the server.
type gitRepo struct {
	t    *testing.T
	work string
	URL  string
}

// newRepo creates an empty repository served at /<scope>/<name>.git, with
// master as the initial branch.
func (s *gitServer) newRepo(t *testing.T, scope, name string) *gitRepo {
	t.Helper()
	bare := filepath.Join(s.root, scope, name+".git")
	if err := os.MkdirAll(bare, 0o755); err != nil {
		t.Fatal(err)
	}
	runGit(t, bare, "init", "--bare", "-q", "-b", "master")
	r := &gitRepo{t: t, work: t.TempDir(), URL: s.srv.URL + "/" + scope + "/" + name + ".git"}
	r.git("init", "-q", "-b", "master")
	r.git("remote", "add", "origin", bare)
	return r
}

// git runs git in the working tree and returns its trimmed output.
func (r *gitRepo) git(args ...string) string {
	r.t.Helper()
	return runGit(r.t, r.work, args...)
}

// commit writes files (path → content; "" removes the path), commits and
// pushes every branch and tag, and returns the commit's SHA.
func (r *gitRepo) commit(msg string, files map[string]string) string {
	r.t.Helper()
	for p, content := range files {
		full := filepath.Join(r.work, filepath.FromSlash(p))
		if content == "" {
			os.RemoveAll(full)
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			r.t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			r.t.Fatal(err)
		}
	}
	r.git("add", "-A")
	r.git("commit", "-q", "--allow-empty", "-m", msg)
	r.push()
	return r.head()
}

func (r *gitRepo) push() {
	r.t.Helper()
	r.git("push", "-q", "--force", "--all", "origin")
	r.git("push", "-q", "--force", "--tags", "origin")
}

func (r *gitRepo) head() string {
	r.t.Helper()
	return r.git("rev-parse", "HEAD")
}

func runGit(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=test", "GIT_AUTHOR_EMAIL=test@example.com",
		"GIT_COMMITTER_NAME=test", "GIT_COMMITTER_EMAIL=test@example.com",
	)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	return strings.TrimSpace(out.String())
}
