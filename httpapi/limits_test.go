package httpapi

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/metrics"
)

// serveWithLimits runs one listener with limits on loopback.
func serveWithLimits(t *testing.T, name string, h *echo.Echo, limits Limits) string {
	t.Helper()
	srv := NewServer(Listener{Name: name, Addr: "127.0.0.1:0", Handler: h, Limits: limits})
	srv.ShutdownTimeout = time.Second
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: Run: %v", name, err)
		}
	})
	return srv.Addr(name)
}

func limitedCount(t *testing.T, listener, limit string) float64 {
	return counterValue(t, metrics.HTTPLimited.WithLabelValues(listener, limit))
}

func artifactsWithLimits(t *testing.T, data []byte, limits Limits) string {
	t.Helper()
	n := startNode(t, "a", nil)
	n.b.put(artPath, data)
	return serveWithLimits(t, "artifacts-limited", NewArtifactServer(Config{Backend: n.b, PeerWait: time.Second}), limits)
}

func TestRangeCountIsCapped(t *testing.T) {
	data := randomBytes(64<<10, 40)
	addr := artifactsWithLimits(t, data, Limits{MaxRanges: 4})
	ranges := func(n int) string {
		var parts []string
		for i := range n {
			parts = append(parts, fmt.Sprintf("%d-%d", i*10, i*10+4))
		}
		return "bytes=" + strings.Join(parts, ",")
	}
	before := limitedCount(t, "artifacts-limited", limitRanges)
	resp, body := do(t, http.MethodGet, "http://"+addr+"/"+artPath, nil, map[string]string{"Range": ranges(4)})
	if resp.StatusCode != http.StatusPartialContent {
		t.Fatalf("4 ranges: %d, want 206", resp.StatusCode)
	}
	_, params, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	parts := 0
	for {
		if _, err := mr.NextPart(); err != nil {
			break
		}
		parts++
	}
	if parts != 4 {
		t.Fatalf("4 ranges answered with %d parts", parts)
	}
	resp, body = do(t, http.MethodGet, "http://"+addr+"/"+artPath, nil, map[string]string{"Range": ranges(5)})
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("5 ranges: %d with %d bytes, want 200 with the whole %d", resp.StatusCode, len(body), len(data))
	}
	if got := limitedCount(t, "artifacts-limited", limitRanges) - before; got != 1 {
		t.Fatalf("capped ranges counted %v times, want 1", got)
	}
}

// stalledGet sends a GET and never reads the answer.
func stalledGet(t *testing.T, addr, path string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: nil}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.(*net.TCPConn).SetReadBuffer(4 << 10)
	if _, err := fmt.Fprintf(conn, "GET /%s HTTP/1.1\r\nHost: t\r\n\r\n", path); err != nil {
		t.Fatal(err)
	}
	return conn
}

// cutWithin waits until the server has closed conn: reading what it sent
// ends in EOF or a reset rather than blocking past d.
func cutWithin(t *testing.T, conn net.Conn, d time.Duration) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("connection still open after %v", d)
	}
}

// slowGet downloads path reading chunk bytes every pause and returns the body.
func slowGet(t *testing.T, addr, path string, chunk int, pause time.Duration) []byte {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Small enough that the server's writes wait for this reader.
	_ = conn.(*net.TCPConn).SetReadBuffer(128 << 10)
	if _, err := fmt.Fprintf(conn, "GET /%s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", path); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, chunk), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out bytes.Buffer
	buf := make([]byte, chunk)
	for {
		n, err := io.ReadFull(resp.Body, buf)
		out.Write(buf[:n])
		if err != nil {
			break
		}
		time.Sleep(pause)
	}
	return out.Bytes()
}

func TestStalledDownloadIsCutSlowOneIsNot(t *testing.T) {
	data := randomBytes(6<<20, 41)
	idle := 400 * time.Millisecond
	addr := artifactsWithLimits(t, data, Limits{WriteIdleTimeout: idle})
	before := limitedCount(t, "artifacts-limited", limitWriteIdle)
	stalled := stalledGet(t, addr, artPath)
	defer stalled.Close()
	// A consumer at about 1 MB/s, slower than the kernel drains a send
	// buffer in one idle timeout, gets every byte.
	got := slowGet(t, addr, artPath, 32<<10, 30*time.Millisecond)
	if !bytes.Equal(got, data) {
		t.Fatalf("slow consumer got %d bytes that differ from the %d served", len(got), len(data))
	}
	cutWithin(t, stalled, 5*time.Second)
	if got := limitedCount(t, "artifacts-limited", limitWriteIdle) - before; got != 1 {
		t.Fatalf("cut %v connections for write idleness, want 1", got)
	}
}

// TestStalledFileDownloadIsCutThroughSendfile serves a file the way
// net/http sends one (sendfile through the connection's ReadFrom) and
// checks that the deadline renewal between chunks keeps a slow consumer's
// bytes intact and still cuts a stalled one.
func TestStalledFileDownloadIsCutThroughSendfile(t *testing.T) {
	data := randomBytes(5<<20+123, 42)
	file := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEcho(plainErrorHandler)
	e.GET("/blob", func(c echo.Context) error {
		http.ServeFile(c.Response().Writer, c.Request(), file)
		return nil
	})
	addr := serveWithLimits(t, "files", e, Limits{WriteIdleTimeout: 300 * time.Millisecond})
	before := limitedCount(t, "files", limitWriteIdle)
	stalled := stalledGet(t, addr, "blob")
	defer stalled.Close()
	if got := slowGet(t, addr, "blob", 32<<10, 30*time.Millisecond); !bytes.Equal(got, data) {
		t.Fatalf("slow consumer got %d bytes that differ from the %d served", len(got), len(data))
	}
	cutWithin(t, stalled, 5*time.Second)
	if got := limitedCount(t, "files", limitWriteIdle) - before; got != 1 {
		t.Fatalf("cut %v connections for write idleness, want 1", got)
	}
}

func TestTricklingBodyIsCut(t *testing.T) {
	n := startNode(t, "a", nil)
	prev := []byte("previous")
	n.b.put(artPath, prev)
	addr := serveWithLimits(t, "api-limited", NewAPIServer(Config{Backend: n.b, APIToken: testToken}), Limits{ReadIdleTimeout: 500 * time.Millisecond})
	before := limitedCount(t, "api-limited", limitReadIdle)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "PUT %s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\nContent-Length: 1000\r\n\r\n", clusterapi.ArtifactPath(artPath), testToken)
	start := time.Now()
	answered := make(chan int, 1)
	go func() {
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			answered <- 0
			return
		}
		answered <- resp.StatusCode
	}()
	var code int
trickle:
	for {
		select {
		case code = <-answered:
			break trickle
		case <-time.After(200 * time.Millisecond):
			_, _ = conn.Write([]byte("x"))
		}
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("trickling body held for %v", took)
	}
	if code != 0 && code != http.StatusBadRequest {
		t.Fatalf("trickling body answered %d, want 400 or a closed connection", code)
	}
	if got := limitedCount(t, "api-limited", limitReadIdle) - before; got != 1 {
		t.Fatalf("cut %v bodies for read idleness, want 1", got)
	}
	if _, body := do(t, http.MethodGet, "http://"+n.artifact+"/"+artPath, nil, nil); !bytes.Equal(body, prev) {
		t.Fatalf("artifact after the cut upload: %q", body)
	}
	// A body that arrives steadily is not cut.
	data := randomBytes(64<<10, 43)
	resp, body := do(t, http.MethodPut, "http://"+addr+clusterapi.ArtifactsPrefix+artPath, &slowReader{data: data, step: 8 << 10, pause: 200 * time.Millisecond}, bearer)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("steady PUT: %d %s", resp.StatusCode, body)
	}
}

// slowReader yields step bytes per pause, a slow but steady client.
type slowReader struct {
	data  []byte
	step  int
	pause time.Duration
}

func (s *slowReader) Read(p []byte) (int, error) {
	if len(s.data) == 0 {
		return 0, io.EOF
	}
	time.Sleep(s.pause)
	n := copy(p[:min(len(p), s.step)], s.data)
	s.data = s.data[n:]
	return n, nil
}

func TestConnectionsBeyondTheBoundGet503(t *testing.T) {
	n := startNode(t, "a", nil)
	n.b.put(artPath, []byte("x"))
	addr := serveWithLimits(t, "bounded", NewArtifactServer(Config{Backend: n.b}), Limits{MaxConnections: 2})
	before := limitedCount(t, "bounded", limitConnections)
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	var resp *http.Response
	// The held connections are accepted asynchronously: wait for the bound to bite.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var err error
		resp, err = client.Get("http://" + addr + "/" + artPath)
		if err == nil && resp.StatusCode == http.StatusServiceUnavailable {
			break
		}
		if err == nil {
			resp.Body.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("third connection: %v, %v; want 503", resp, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "too many connections") {
		t.Fatalf("503 without Retry-After or reason: %v %q", resp.Header, body)
	}
	if limitedCount(t, "bounded", limitConnections) <= before {
		t.Fatal("refused connection not counted")
	}
	held[0].Close()
	deadline = time.Now().Add(5 * time.Second)
	for {
		resp, err := client.Get("http://" + addr + "/" + artPath)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a connection closed: %v, %v; want 200", resp, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAbortedReadWithResponseInFlightIsNotCut: net/http ends its
// background read at the end of every handler by setting a past read
// deadline from another goroutine; a response still queued in the kernel
// at that moment must go on. The limit once took that wake-up for a
// client that stopped reading and reset the connection (seen as resets in
// the middle of downloads on keep-alive connections).
func TestAbortedReadWithResponseInFlightIsNotCut(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ll := newLimitListener(ln, "abort-read", Limits{WriteIdleTimeout: 30 * time.Second})
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	_ = client.(*net.TCPConn).SetReadBuffer(4 << 10)
	server, err := ll.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	// A response the client has not read yet, still queued.
	data := randomBytes(256<<10, 45)
	if _, err := server.Write(data); err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() {
		_, err := server.Read(make([]byte, 1))
		readErr <- err
	}()
	time.Sleep(200 * time.Millisecond)
	_ = server.SetReadDeadline(time.Unix(1, 0)) // what abortPendingRead does
	if err := <-readErr; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("aborted read: %v, want a deadline error", err)
	}
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(data))
	if _, err := io.ReadFull(client, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("response after the aborted read: %v", err)
	}
}
