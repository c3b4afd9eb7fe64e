package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"
)

// fileServerCommand is the hidden first argument that makes the bench
// binary run the baseline FileServer instead of the benchmark. The
// baseline runs as a process of its own, as the follower does, so both
// pay the same for scheduling and loopback, and its CPU time can be read
// from /proc apart from the load generator's.
const fileServerCommand = "__fileserver"

// runFileServer serves dir with http.FileServer on a loopback port it
// prints as the first line of stdout, until killed.
func runFileServer(dir string) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "fileserver:", err)
		return 1
	}
	fmt.Println("http://" + ln.Addr().String())
	srv := &http.Server{Handler: http.FileServer(http.Dir(dir)), ReadHeaderTimeout: 10 * time.Second}
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, "fileserver:", err)
	}
	return 1
}

type fileServer struct {
	url  string
	pid  int
	stop func()
}

// startFileServer re-executes this binary as the baseline FileServer over dir.
func startFileServer(ctx context.Context, dir string) (*fileServer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("fileserver: %w", err)
	}
	cmd := exec.Command(self, fileServerCommand, dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start fileserver: %w", err)
	}
	stop := func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		lines <- strings.TrimSpace(line)
	}()
	select {
	case url := <-lines:
		if !strings.HasPrefix(url, "http://") {
			stop()
			return nil, fmt.Errorf("fileserver printed %q, want its URL", url)
		}
		return &fileServer{url: url, pid: cmd.Process.Pid, stop: stop}, nil
	case <-time.After(10 * time.Second):
		stop()
		return nil, fmt.Errorf("fileserver did not print its address within 10s")
	case <-ctx.Done():
		stop()
		return nil, ctx.Err()
	}
}
