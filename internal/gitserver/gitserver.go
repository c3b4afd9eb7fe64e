// Package gitserver serves Git repositories over smart HTTP on loopback
// with the real `git http-backend`, for the local cluster of `make run`
// and for tests. Repositories are bare repositories under one root; each
// has a working tree whose commits are pushed to it.
package gitserver

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// HTTPBackend is where Debian's git package installs the CGI program.
const HTTPBackend = "/usr/lib/git-core/git-http-backend"

// Server is a smart-HTTP Git server.
type Server struct {
	// URL is the base URL; a repository named n is at URL + "/" + n + ".git".
	URL  string
	root string
	srv  *http.Server
	ln   net.Listener
}

// Start serves the bare repositories under root on 127.0.0.1. wrap, when
// set, wraps the handler (to add authentication, say).
func Start(root string, wrap func(http.Handler) http.Handler) (*Server, error) {
	if _, err := os.Stat(HTTPBackend); err != nil {
		return nil, fmt.Errorf("git http-backend is required (Debian package git): %w", err)
	}
	if err := os.MkdirAll(root, 0o750); err != nil {
		return nil, err
	}
	var h http.Handler = &cgi.Handler{
		Path:   HTTPBackend,
		Env:    []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1", "GIT_CONFIG_NOSYSTEM=1", "HOME=" + root},
		Stderr: io.Discard,
	}
	if wrap != nil {
		h = wrap(h)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("git server: %w", err)
	}
	s := &Server{URL: "http://" + ln.Addr().String(), root: root, srv: &http.Server{Handler: h}, ln: ln}
	go s.srv.Serve(ln)
	return s, nil
}

// Close stops serving.
func (s *Server) Close() error { return s.srv.Close() }

// Repo is a working tree whose commits are pushed to a bare repository
// on the server.
type Repo struct {
	// URL is the repository's clone URL.
	URL  string
	work string
}

// NewRepo creates an empty repository served at <URL>/<name>.git, with
// master as its initial branch; work is a directory for its working tree.
func (s *Server) NewRepo(name, work string) (*Repo, error) {
	bare := filepath.Join(s.root, name+".git")
	if err := os.MkdirAll(filepath.Dir(bare), 0o750); err != nil {
		return nil, err
	}
	if _, err := git("", "init", "--bare", "--initial-branch=master", bare); err != nil {
		return nil, err
	}
	if _, err := git("", "init", "--initial-branch=master", work); err != nil {
		return nil, err
	}
	r := &Repo{URL: s.URL + "/" + name + ".git", work: work}
	if _, err := r.Git("remote", "add", "origin", bare); err != nil {
		return nil, err
	}
	return r, nil
}

// WorkTree is the path of the working tree.
func (r *Repo) WorkTree() string { return r.work }

// Git runs a git command in the working tree.
func (r *Repo) Git(args ...string) (string, error) { return git(r.work, args...) }

// Commit writes files (path → content) into the working tree, commits them
// on the current branch, pushes it and returns the commit's SHA.
func (r *Repo) Commit(msg string, files map[string]string) (string, error) {
	for p, content := range files {
		full := filepath.Join(r.work, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o750); err != nil {
			return "", err
		}
		if err := os.WriteFile(full, []byte(content), 0o640); err != nil {
			return "", err
		}
	}
	if _, err := r.Git("add", "-A"); err != nil {
		return "", err
	}
	if _, err := r.Git("commit", "-q", "--allow-empty", "-m", msg); err != nil {
		return "", err
	}
	branch, err := r.Git("rev-parse", "--abbrev-ref", "HEAD")
	if err != nil {
		return "", err
	}
	if _, err := r.Git("push", "-q", "origin", branch); err != nil {
		return "", err
	}
	return r.Git("rev-parse", "HEAD")
}

func git(dir string, args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"GIT_AUTHOR_NAME=sourceraft", "GIT_AUTHOR_EMAIL=sourceraft@localhost",
		"GIT_COMMITTER_NAME=sourceraft", "GIT_COMMITTER_EMAIL=sourceraft@localhost",
		"GIT_CONFIG_NOSYSTEM=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}
