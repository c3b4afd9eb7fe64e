package httpapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/metrics"
	"github.com/sourceraft/sourceraft/storage"
)

const artPath = "gitrepository/flux-system/podinfo/abc123.tar.gz"

func TestArtifactFullGET(t *testing.T) {
	n := startNode(t, "a", nil)
	data := randomBytes(3*64<<10+1234, 1)
	a := n.b.put(artPath, data)
	other := n.b.put("bucket/ns/b/index.json", []byte(`{}`))

	resp, body := do(t, http.MethodGet, "http://"+n.artifact+"/"+artPath, nil, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if !bytes.Equal(body, data) {
		t.Fatalf("body differs: got %d bytes, want %d", len(body), len(data))
	}
	want := map[string]string{
		"Content-Type":   "application/gzip",
		"Content-Length": strconv.Itoa(len(data)),
		"ETag":           `"` + a.Digest + `"`,
		"Last-Modified":  a.LastUpdateTime.Format(http.TimeFormat),
		"Accept-Ranges":  "bytes",
	}
	for k, v := range want {
		if got := resp.Header.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if !strings.HasPrefix(a.Digest, "sha256:") {
		t.Errorf("digest %q", a.Digest)
	}

	resp, body = do(t, http.MethodGet, "http://"+n.artifact+"/"+other.Path(), nil, nil)
	if resp.StatusCode != http.StatusOK || string(body) != "{}" || resp.Header.Get("Content-Type") != "application/octet-stream" {
		t.Errorf("non-gzip artifact: %d %q %q", resp.StatusCode, body, resp.Header.Get("Content-Type"))
	}
}

func TestArtifactHEAD(t *testing.T) {
	n := startNode(t, "a", nil)
	data := randomBytes(100<<10, 2)
	a := n.b.put(artPath, data)
	resp, body := do(t, http.MethodHead, "http://"+n.artifact+"/"+artPath, nil, nil)
	if resp.StatusCode != http.StatusOK || len(body) != 0 {
		t.Fatalf("HEAD: %d, %d body bytes", resp.StatusCode, len(body))
	}
	if resp.ContentLength != int64(len(data)) || resp.Header.Get("ETag") != `"`+a.Digest+`"` {
		t.Errorf("HEAD headers: length %d etag %q", resp.ContentLength, resp.Header.Get("ETag"))
	}
}

func TestArtifactRange(t *testing.T) {
	n := startNode(t, "a", nil)
	data := randomBytes(200<<10, 3)
	n.b.put(artPath, data)
	url := "http://" + n.artifact + "/" + artPath

	// Across the first chunk boundary.
	lo, hi := 64<<10-10, 64<<10+20
	resp, body := do(t, http.MethodGet, url, nil, map[string]string{"Range": "bytes=" + strconv.Itoa(lo) + "-" + strconv.Itoa(hi)})
	if resp.StatusCode != http.StatusPartialContent {
		t.Fatalf("single range: %d", resp.StatusCode)
	}
	if !bytes.Equal(body, data[lo:hi+1]) {
		t.Errorf("single range body differs")
	}
	if got, want := resp.Header.Get("Content-Range"), "bytes "+strconv.Itoa(lo)+"-"+strconv.Itoa(hi)+"/"+strconv.Itoa(len(data)); got != want {
		t.Errorf("Content-Range %q, want %q", got, want)
	}

	resp, body = do(t, http.MethodGet, url, nil, map[string]string{"Range": "bytes=0-9,150000-150099"})
	if resp.StatusCode != http.StatusPartialContent {
		t.Fatalf("multi range: %d", resp.StatusCode)
	}
	checkMultipart(t, resp, body, data, [][2]int{{0, 9}, {150000, 150099}})

	resp, _ = do(t, http.MethodGet, url, nil, map[string]string{"Range": "bytes=999999-"})
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Errorf("unsatisfiable range: %d", resp.StatusCode)
	}
}

func checkMultipart(t *testing.T, resp *http.Response, body, data []byte, ranges [][2]int) {
	t.Helper()
	mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/byteranges" {
		t.Fatalf("Content-Type %q: %v", resp.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	for i, r := range ranges {
		part, err := mr.NextPart()
		if err != nil {
			t.Fatalf("part %d: %v", i, err)
		}
		got, _ := io.ReadAll(part)
		if !bytes.Equal(got, data[r[0]:r[1]+1]) {
			t.Errorf("part %d differs", i)
		}
		if ct := part.Header.Get("Content-Type"); ct != "application/gzip" {
			t.Errorf("part %d Content-Type %q", i, ct)
		}
	}
	if _, err := mr.NextPart(); err != io.EOF {
		t.Errorf("extra parts: %v", err)
	}
}

func TestArtifactIfNoneMatch(t *testing.T) {
	n := startNode(t, "a", nil)
	data := randomBytes(10<<10, 4)
	a := n.b.put(artPath, data)
	url := "http://" + n.artifact + "/" + artPath
	resp, body := do(t, http.MethodGet, url, nil, map[string]string{"If-None-Match": `"` + a.Digest + `"`})
	if resp.StatusCode != http.StatusNotModified || len(body) != 0 {
		t.Errorf("matching If-None-Match: %d, %d bytes", resp.StatusCode, len(body))
	}
	resp, body = do(t, http.MethodGet, url, nil, map[string]string{"If-None-Match": `"sha256:other"`})
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Errorf("other If-None-Match: %d, %d bytes", resp.StatusCode, len(body))
	}
}

func TestArtifactBadPaths(t *testing.T) {
	n := startNode(t, "a", nil)
	// Every traversal below would land here if it were decoded and cleaned.
	n.b.put("gitrepository/ns/x/a.tar.gz", []byte("secret"))
	if code, _ := rawGet(t, n.artifact, "/gitrepository/ns/x/a.tar.gz"); code != http.StatusOK {
		t.Fatalf("control request: %d", code)
	}
	n.b.mu.Lock()
	n.b.asked = nil
	n.b.mu.Unlock()

	for _, target := range []string{
		"/../etc/passwd",
		"/gitrepository/ns/name/..%2f..%2fx",
		"/gitrepository/ns/name/..%2fx%2fa.tar.gz",
		"/gitrepository/ns/name/%2e%2e/x/a.tar.gz",
		"/gitrepository/ns/name/%2E%2E/x/a.tar.gz",
		"/gitrepository/ns/name/../x/a.tar.gz",
		"/gitrepository/ns/x%2fa.tar.gz",
		"/gitrepository%2Fns/x/a.tar.gz",
		"/gitrepository/./ns/x/a.tar.gz",
		"//gitrepository/ns/x/a.tar.gz",
		"/gitrepository/ns/x/a.tar.gz/",
		"/gitrepository/ns/x/a.tar.gz/..",
		"/a/b/c",
		"/a/b/c/d/e",
		"/",
		"/gitrepository/ns/x/a.tar.gz%00",
		"/gitrepository/ns/x/%00",
		"/gitrepository/ns/x\\a.tar.gz",
		"/gitrepository/ns/x%5ca.tar.gz",
		"/gitrepository/ns/x/a.tar.gz%",
		"/gitrepository/ns/x/a.tar.gz%zz",
		"/gitrepository/ns/x/%252e%252e",
	} {
		code, body := rawGet(t, n.artifact, target)
		if code != http.StatusBadRequest && code != http.StatusNotFound {
			t.Errorf("GET %q: %d %q, want 400 or 404", target, code, body)
		}
	}
	// Only a path that ParsePath accepts may ever reach the backend.
	for _, p := range n.b.askedPaths() {
		if _, err := storage.ParsePath(p); err != nil {
			t.Errorf("backend asked for invalid path %q", p)
		}
		if p == "gitrepository/ns/x/a.tar.gz" {
			t.Errorf("a traversal reached the protected artifact")
		}
	}
}

func TestArtifactLateApply(t *testing.T) {
	n := startNode(t, "a", nil)
	data := randomBytes(70<<10, 5)
	n.b.putAfter(artPath, data, 300*time.Millisecond)
	start := time.Now()
	resp, body := do(t, http.MethodGet, "http://"+n.artifact+"/"+artPath, nil, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("late artifact: %d, %d bytes", resp.StatusCode, len(body))
	}
	if el := time.Since(start); el < 250*time.Millisecond {
		t.Errorf("served after %v, before it was applied", el)
	}
}

// twoNodes returns a follower without the artifact and a leader with it.
func twoNodes(t *testing.T, data []byte) (follower, leader *testNode) {
	fast := func(c *Config) { c.PeerWait = 200 * time.Millisecond }
	follower, leader = startNode(t, "a", fast), startNode(t, "b", fast)
	formCluster(leader, follower, leader)
	if data != nil {
		leader.b.put(artPath, data)
	}
	return follower, leader
}

func TestArtifactFromPeer(t *testing.T) {
	data := randomBytes(300<<10, 6)
	f, l := twoNodes(t, data)
	url := "http://" + f.artifact + "/" + artPath

	resp, body := do(t, http.MethodGet, url, nil, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("proxied GET: %d, %d bytes", resp.StatusCode, len(body))
	}
	if resp.Header.Get("ETag") != `"`+digestOf(data)+`"` || resp.ContentLength != int64(len(data)) ||
		resp.Header.Get("Content-Type") != "application/gzip" {
		t.Errorf("proxied headers: %v", resp.Header)
	}

	resp, body = do(t, http.MethodGet, url, nil, map[string]string{"Range": "bytes=100-199"})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, data[100:200]) {
		t.Errorf("proxied range: %d, %d bytes", resp.StatusCode, len(body))
	}
	resp, _ = do(t, http.MethodGet, url, nil, map[string]string{"If-None-Match": `"` + digestOf(data) + `"`})
	if resp.StatusCode != http.StatusNotModified {
		t.Errorf("proxied If-None-Match: %d", resp.StatusCode)
	}
	resp, body = do(t, http.MethodHead, url, nil, nil)
	if resp.StatusCode != http.StatusOK || len(body) != 0 || resp.ContentLength != int64(len(data)) {
		t.Errorf("proxied HEAD: %d, length %d", resp.StatusCode, resp.ContentLength)
	}
	if f.b.has(artPath) {
		t.Errorf("the follower stored a proxied artifact")
	}
	if l.b.lookups.Load() == 0 {
		t.Errorf("leader was never asked")
	}
}

func TestArtifactForwardedNotReforwarded(t *testing.T) {
	f, l := twoNodes(t, randomBytes(1000, 7))
	resp, _ := do(t, http.MethodGet, "http://"+f.artifact+"/"+artPath, nil, map[string]string{forwardedHeader: "1"})
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("forwarded request: %d, want 404", resp.StatusCode)
	}
	if got := l.b.lookups.Load(); got != 0 {
		t.Errorf("forwarded request was forwarded again (%d lookups on the leader)", got)
	}
}

func TestArtifactMissingEverywhere(t *testing.T) {
	f, l := twoNodes(t, nil)
	url := "http://" + f.artifact + "/" + artPath
	if resp, _ := do(t, http.MethodGet, url, nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("missing everywhere: %d, want 404", resp.StatusCode)
	}

	// The leader's 404 is authoritative even with another peer down.
	dead := startNode(t, "c", nil)
	formCluster(l, f, l, dead)
	deadAddr := dead.artifact
	f.b.setStatus(func(s *clusterapi.Status) { s.Peers[2].StorageAddr = "127.0.0.1:1" })
	if resp, _ := do(t, http.MethodGet, url, nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("leader says missing, a peer is down: %d, want 404", resp.StatusCode)
	}

	// Without the leader's word, an unreachable peer might have it: 503.
	f.b.setStatus(func(s *clusterapi.Status) { s.Peers[1].StorageAddr = "127.0.0.1:1"; s.Peers[2].StorageAddr = deadAddr })
	resp, _ := do(t, http.MethodGet, url, nil, nil)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("leader unreachable: %d, want 503 with Retry-After", resp.StatusCode)
	}
}

// getExpectingFailure reads a download that must not complete: the server
// refuses it or cuts the body short of Content-Length. A client timeout is
// not such a failure (a server that stalls would pass), so it fails the
// test. What arrived may differ from the content (a first download streams
// through the hash, and only its end shows the mismatch), but it is never
// all of it.
func getExpectingFailure(t *testing.T, url string, hdr map[string]string, data []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := testClient.Do(req)
	if err != nil {
		if isTimeout(err) {
			t.Fatalf("download timed out instead of failing: %v", err)
		}
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil && isTimeout(err) {
		t.Fatalf("download stalled after %d bytes until the client gave up instead of failing: %v", len(body), err)
	}
	if err == nil && (resp.ContentLength < 0 || int64(len(body)) == resp.ContentLength) {
		t.Fatalf("corrupt download completed: status %d, %d bytes, Content-Length %d", resp.StatusCode, len(body), resp.ContentLength)
	}
	if len(body) >= len(data) {
		t.Errorf("client received %d bytes of a %d-byte artifact", len(body), len(data))
	}
}

// isTimeout reports whether err is the client giving up rather than the
// server ending the exchange.
func isTimeout(err error) bool {
	ne, ok := errors.AsType[net.Error](err)
	return (ok && ne.Timeout()) || errors.Is(err, context.DeadlineExceeded)
}

// TestArtifactCorruptMidBody corrupts a blob file far from its start: the
// first download streams through the hash and is cut off before its last
// bytes, so it never completes; a range is checked whole before it starts.
func TestArtifactCorruptMidBody(t *testing.T) {
	n := startNode(t, "a", nil)
	data := randomBytes(10*64<<10, 8)
	n.b.put(artPath, data)
	n.b.corrupt(artPath, 5*64<<10+150)
	errs := metrics.HTTPRequestErrors.WithLabelValues("artifacts", "GET")
	before := counterValue(t, errs)

	getExpectingFailure(t, "http://"+n.artifact+"/"+artPath, nil, data)

	if got := counterValue(t, errs) - before; got != 1 {
		t.Errorf("errors counted: %v, want 1", got)
	}
	// The log is written before the abort reaches the client, but give the
	// handler's goroutine a moment to be sure of the count.
	time.Sleep(50 * time.Millisecond)
	if got := countLines(n.logs.String(), "level=ERROR"); got != 1 {
		t.Errorf("error log lines: %d, want 1:\n%s", got, n.logs.String())
	}

	// A range is verified before its first byte: no peer has it, so 500.
	resp, _ := do(t, http.MethodGet, "http://"+n.artifact+"/"+artPath, nil, map[string]string{"Range": "bytes=0-"})
	if resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("range of a corrupt blob: %d, want 500", resp.StatusCode)
	}
}

func TestArtifactCorruptFirstChunk(t *testing.T) {
	n := startNode(t, "a", nil)
	n.b.put(artPath, randomBytes(3*64<<10, 9))
	n.b.corrupt(artPath, 150)
	resp, body := do(t, http.MethodGet, "http://"+n.artifact+"/"+artPath, nil, nil)
	if resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("corrupt start: %d, want 500", resp.StatusCode)
	}
	if resp.Header.Get("ETag") != "" || resp.Header.Get("Content-Type") == "application/gzip" {
		t.Errorf("500 carries the artifact's headers: %v", resp.Header)
	}
	if !strings.Contains(string(body), storage.ErrCorrupt.Error()) {
		t.Errorf("body %q", body)
	}
}

func TestArtifactPeerCorruptMidBody(t *testing.T) {
	data := randomBytes(10*64<<10, 10)
	f, l := twoNodes(t, data)
	l.b.corrupt(artPath, 6*64<<10+150)
	getExpectingFailure(t, "http://"+f.artifact+"/"+artPath, nil, data)
}

// TestArtifactCorruptRepairedFromPeer: a replica whose blob file went bad
// answers from a peer while nothing was sent, and replaces its file with
// the peer's verified copy, after which it serves it itself.
func TestArtifactCorruptRepairedFromPeer(t *testing.T) {
	for _, size := range []int{1000, 100 << 10, 3 << 20} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			data := randomBytes(size, 11)
			a, b := startNode(t, "a", nil), startNode(t, "b", nil)
			formCluster(b, a, b)
			a.b.put(artPath, data)
			b.b.put(artPath, data)
			a.b.corrupt(artPath, int64(size/2))
			url := "http://" + a.artifact + "/" + artPath
			if size <= 256<<10 {
				// Checked before the first byte: the peer's copy is served.
				resp, body := do(t, http.MethodGet, url, nil, nil)
				if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
					t.Fatalf("GET: %d, %d bytes", resp.StatusCode, len(body))
				}
			} else {
				// Found at the end of the stream: cut off.
				getExpectingFailure(t, url, nil, data)
			}
			deadline := time.Now().Add(10 * time.Second)
			for a.b.f.Integrity().Repaired == 0 {
				if time.Now().After(deadline) {
					t.Fatalf("not repaired: %+v\n%s", a.b.f.Integrity(), a.logs.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			lookups := b.b.lookups.Load()
			resp, body := do(t, http.MethodGet, url, nil, nil)
			if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
				t.Fatalf("GET after repair: %d, %d bytes", resp.StatusCode, len(body))
			}
			if b.b.lookups.Load() != lookups {
				t.Fatal("the repaired replica still asks its peer")
			}
			if st := a.b.f.Integrity(); st.Corrupt != 1 || st.Repaired != 1 {
				t.Fatalf("integrity %+v", st)
			}
		})
	}
}

func TestArtifactMethodNotAllowed(t *testing.T) {
	n := startNode(t, "a", nil)
	n.b.put(artPath, []byte("x"))
	resp, _ := do(t, http.MethodPost, "http://"+n.artifact+"/"+artPath, strings.NewReader("x"), nil)
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", resp.StatusCode)
	}
}

func TestArtifactPathUnit(t *testing.T) {
	for in, want := range map[string]error{
		"/helmchart/ns/podinfo/podinfo-6.5.0+build.1.tgz":   nil,
		"/helmchart/ns/podinfo/podinfo-6.5.0%2Bbuild.1.tgz": nil,
		"/helmchart/ns/podinfo/a%2fb":                       storage.ErrInvalidPath,
		"/helmchart/ns/podinfo/%2e":                         storage.ErrInvalidPath,
		"/helmchart/ns/podinfo/%1f":                         storage.ErrInvalidPath,
	} {
		k, err := artifactKey(in)
		if !errors.Is(err, want) && !(want == nil && err == nil) {
			t.Errorf("%q: %v, want %v", in, err, want)
		}
		if err == nil && strings.HasPrefix(k.String(), "/") {
			t.Errorf("%q: path %q keeps its slash", in, k)
		}
	}
}

// TestArtifactDownloadSurvivesGC: a slow consumer of a blob sent with
// sendfile gets the right bytes although the artifact is deleted (its file
// unlinked) and others are written while it reads.
func TestArtifactDownloadSurvivesGC(t *testing.T) {
	n := startNode(t, "a", nil)
	data := randomBytes(8<<20, 12)
	n.b.put(artPath, data)
	url := "http://" + n.artifact + "/" + artPath
	// The first download verifies the file; the next one is sent by the kernel.
	if resp, body := do(t, http.MethodGet, url, nil, nil); resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("first GET: %d, %d bytes", resp.StatusCode, len(body))
	}
	resp, err := testClient.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	head := make([]byte, 64<<10)
	if _, err := io.ReadFull(resp.Body, head); err != nil {
		t.Fatal(err)
	}
	gone, err := storage.ParsePath(artPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.b.Delete(context.Background(), gone); err != nil {
		t.Fatal(err)
	}
	if n.b.f.HasBlob(digestOf(data)) {
		t.Fatal("blob still stored after its artifact went")
	}
	for i := range 3 {
		n.b.put(fmt.Sprintf("gitrepository/flux-system/other/%d.tar.gz", i), randomBytes(len(data), uint64(20+i)))
	}
	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if got := append(head, rest...); !bytes.Equal(got, data) {
		t.Fatalf("received %d bytes that differ from the %d sent", len(got), len(data))
	}
}
