package clusterapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// seen is what a replica received: the client's side of the wire.
type seen struct {
	method, path, auth, contentType string
	length                          int64
	body                            []byte
}

// replica is a loopback server answering each route with code and body,
// recording every request.
type replica struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []seen
}

func newReplica(t *testing.T, code int, body string) *replica {
	t.Helper()
	r := &replica{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.reqs = append(r.reqs, seen{req.Method, req.URL.EscapedPath(), req.Header.Get("Authorization"),
			req.Header.Get("Content-Type"), req.ContentLength, b})
		r.mu.Unlock()
		w.WriteHeader(code)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *replica) addr() string { return strings.TrimPrefix(r.srv.URL, "http://") }

func (r *replica) last(t *testing.T) seen {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.reqs) != 1 {
		t.Fatalf("replica got %d requests, want 1", len(r.reqs))
	}
	return r.reqs[0]
}

func TestClientRegister(t *testing.T) {
	r := newReplica(t, http.StatusNoContent, "")
	p := Peer{ID: "pod/0", RaftAddr: "r:7000", APIAddr: "r:9091", StorageAddr: "r:9090", Fresh: true}
	if err := NewClient(nil, "tok").Register(context.Background(), r.addr(), p); err != nil {
		t.Fatal(err)
	}
	got := r.last(t)
	if got.method != http.MethodPut || got.path != "/v1/nodes/pod%2F0" || got.auth != "Bearer tok" || got.contentType != "application/json" {
		t.Errorf("request %s %s auth %q type %q", got.method, got.path, got.auth, got.contentType)
	}
	var sent Peer
	if err := json.Unmarshal(got.body, &sent); err != nil || sent != p || got.length != int64(len(got.body)) {
		t.Errorf("body %s (length %d): %+v %v", got.body, got.length, sent, err)
	}
}

// Callers tell a leader in transition (503), a conflict and a missing
// route apart by the status the error carries.
func TestClientErrorCarriesStatus(t *testing.T) {
	for _, code := range []int{http.StatusServiceUnavailable, http.StatusConflict, http.StatusNotFound} {
		r := newReplica(t, code, `{"error":"no leader known"}`+"\n")
		err := NewClient(nil, "tok").RemoveNode(context.Background(), r.addr(), "replica-3")
		if StatusCode(err) != code {
			t.Errorf("answer %d: status %d from %v", code, StatusCode(err), err)
		}
		var e *Error
		if !errors.As(err, &e) || e.Body != `{"error":"no leader known"}` || e.Method != http.MethodDelete || e.Path != "/v1/nodes/replica-3" || e.Addr != r.addr() {
			t.Errorf("answer %d: error %#v", code, e)
		}
		if msg := err.Error(); !strings.Contains(msg, "/v1/nodes/replica-3") || !strings.Contains(msg, r.addr()) {
			t.Errorf("error %q names neither route nor replica", msg)
		}
	}
	// 2xx other than the route's answer is no success either.
	r := newReplica(t, http.StatusOK, "{}")
	if err := NewClient(nil, "tok").Register(context.Background(), r.addr(), Peer{ID: "a"}); StatusCode(err) != http.StatusOK {
		t.Errorf("register answered 200: %v", err)
	}
}

func TestClientStatusAndContentHash(t *testing.T) {
	r := newReplica(t, http.StatusOK, wireShapes[0].json)
	st, err := NewClient(nil, "tok").Status(context.Background(), r.addr())
	if err != nil {
		t.Fatal(err)
	}
	if got := r.last(t); got.method != http.MethodGet || got.path != ClusterPath || got.auth != "Bearer tok" {
		t.Errorf("request %+v", got)
	}
	if l, ok := st.Leader(); !ok || l.ID != "replica-0" || st.Term != 7 {
		t.Errorf("status %+v", st)
	}

	h := newReplica(t, http.StatusOK, wireShapes[3].json)
	ch, err := NewClient(nil, "tok").ContentHash(context.Background(), h.addr())
	if err != nil || h.last(t).path != ContentHashPath || ch.AppliedIndex != 120 {
		t.Errorf("content hash %+v %v", ch, err)
	}

	bad := newReplica(t, http.StatusOK, `{"nodeID":`)
	if _, err := NewClient(nil, "tok").Status(context.Background(), bad.addr()); err == nil || !strings.Contains(err.Error(), "decoding answer") {
		t.Errorf("truncated status: %v", err)
	}
}

func TestClientPutArtifact(t *testing.T) {
	r := newReplica(t, http.StatusCreated, wireShapes[4].json)
	res, err := NewClient(nil, "tok").PutArtifact(context.Background(), r.addr(), "bucket/ns/my app/a.tar.gz", strings.NewReader("abc"), 3)
	if err != nil {
		t.Fatal(err)
	}
	got := r.last(t)
	if got.method != http.MethodPut || got.path != "/v1/artifacts/bucket/ns/my%20app/a.tar.gz" || string(got.body) != "abc" || got.length != 3 {
		t.Errorf("request %s %s %q length %d", got.method, got.path, got.body, got.length)
	}
	if res.Size != 3 || res.Revision != "main@sha1:abc" {
		t.Errorf("result %+v", res)
	}
	// Size -1 streams the body chunked.
	c := newReplica(t, http.StatusCreated, wireShapes[4].json)
	if _, err := NewClient(nil, "tok").PutArtifact(context.Background(), c.addr(), "bucket/ns/a/a.tar.gz", strings.NewReader("abc"), -1); err != nil {
		t.Fatal(err)
	}
	if got := c.last(t); got.length != -1 || string(got.body) != "abc" {
		t.Errorf("chunked upload arrived with length %d body %q", got.length, got.body)
	}
}

// A replica that does not answer fails the call within the HTTP client's
// timeout, as no answer: no status.
func TestClientTimeoutAndUnreachable(t *testing.T) {
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-release }))
	defer slow.Close()
	defer close(release)
	c := NewClient(&http.Client{Timeout: 200 * time.Millisecond}, "tok")
	start := time.Now()
	_, err := c.Status(context.Background(), strings.TrimPrefix(slow.URL, "http://"))
	if err == nil || StatusCode(err) != 0 || time.Since(start) > 5*time.Second {
		t.Errorf("slow replica: %v after %v", err, time.Since(start))
	}

	gone := httptest.NewServer(http.NotFoundHandler())
	addr := strings.TrimPrefix(gone.URL, "http://")
	gone.Close()
	if err := c.Register(context.Background(), addr, Peer{ID: "a"}); err == nil || StatusCode(err) != 0 || !strings.Contains(err.Error(), addr) {
		t.Errorf("unreachable replica: %v", err)
	}
}
