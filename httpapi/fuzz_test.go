package httpapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/storage"
)

// FuzzArtifactPath: an escaped request path becomes a storage path only
// when it is exactly kind/namespace/name/file and no escape decoded into
// a separator or a dot.
func FuzzArtifactPath(f *testing.F) {
	for _, s := range []string{artPath, "a/b/c/..%2fd", "a/b/%2e%2e/d", "a/b/c/d%00", "a/b/c/%zz", "a%2Fb/c/d/e", "gitrepository/ns/n/f%20g.tar.gz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, escaped string) {
		k, err := artifactKey(escaped)
		if err != nil {
			return
		}
		p, a := k.String(), k.Identity()
		if p != a.Path() {
			t.Fatalf("%q: path %q but artifact %q", escaped, p, a.Path())
		}
		if _, err := storage.ParsePath(p); err != nil {
			t.Fatalf("%q became %q, which ParsePath refuses: %v", escaped, p, err)
		}
		if strings.Count(p, "/") != 3 || strings.Contains(p, "..") && !strings.Contains(escaped, "..") {
			t.Fatalf("%q became %q", escaped, p)
		}
	})
}

// fuzzArtifactHandler is the artifact listener's handler chain over one
// in-memory artifact, with a range cap of 16.
func fuzzArtifactHandler(f *testing.F, data []byte) http.Handler {
	b := newMemBackend(f, "fuzz")
	b.put(artPath, data)
	cfg := Config{Backend: b, PeerWait: time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	return &guard{listener: "fuzz", limits: Limits{MaxRanges: 16}, next: NewArtifactServer(cfg)}
}

// FuzzRange sends Range (and If-Range) headers through the serving path:
// the answer is 200 with the artifact, 206 with exactly the asked bytes
// or a bounded multipart body, or 416; never more than the cap's worth.
func FuzzRange(f *testing.F) {
	data := randomBytes(10_000, 50)
	h := fuzzArtifactHandler(f, data)
	for _, s := range []string{"bytes=0-99", "bytes=-100", "bytes=9990-", "bytes=0-0,5-5,10-10", "bytes=20000-", "bytes=a-b", "bytes=0-1,0-1,0-1", "items=0-1", "bytes=--1", "bytes=9999-0"} {
		f.Add(s, "")
	}
	f.Add("bytes=0-9", `"sha256:x"`)
	f.Fuzz(func(t *testing.T, rng, ifRange string) {
		req := httptest.NewRequest(http.MethodGet, "/"+artPath, nil)
		req.Header.Set("Range", rng)
		if ifRange != "" {
			req.Header.Set("If-Range", ifRange)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		body := w.Body.Bytes()
		switch w.Code {
		case http.StatusOK:
			if !bytes.Equal(body, data) {
				t.Fatalf("Range %q: 200 with %d bytes", rng, len(body))
			}
		case http.StatusPartialContent:
			if strings.HasPrefix(w.Header().Get("Content-Type"), "multipart/byteranges") {
				// 16 parts of at most the whole artifact, with headers.
				if len(body) > len(data)+16*200 {
					t.Fatalf("Range %q: multipart of %d bytes for a %d byte artifact", rng, len(body), len(data))
				}
				return
			}
			var start, end, size int
			if _, err := fmt.Sscanf(w.Header().Get("Content-Range"), "bytes %d-%d/%d", &start, &end, &size); err != nil {
				t.Fatalf("Range %q: Content-Range %q: %v", rng, w.Header().Get("Content-Range"), err)
			}
			if size != len(data) || start > end || end >= size || !bytes.Equal(body, data[start:end+1]) {
				t.Fatalf("Range %q: Content-Range %q with %d bytes", rng, w.Header().Get("Content-Range"), len(body))
			}
		case http.StatusRequestedRangeNotSatisfiable:
		default:
			t.Fatalf("Range %q: status %d", rng, w.Code)
		}
	})
}

// FuzzRegisterPeer decodes node registrations: bad JSON or ids are 400,
// never a 5xx or a panic, and an accepted one records the path's id.
func FuzzRegisterPeer(f *testing.F) {
	for _, s := range []struct{ id, body string }{
		{"replica-1", `{"id":"replica-1","raftAddr":"10.0.0.2:7000","apiAddr":"10.0.0.2:9091","storageAddr":"10.0.0.2:9090"}`},
		{"replica-2", `{}`},
		{"a", `{"id":"b"}`},
		{"x", `[1,2`},
		{"%2e%2e", `{"fresh":true}`},
		{"n", `{"raftAddr":` + strings.Repeat("[", 10000)},
	} {
		f.Add(s.id, []byte(s.body))
	}
	b := newMemBackend(f, "fuzz")
	h := &guard{listener: "fuzz", next: NewAPIServer(Config{Backend: b, APIToken: testToken, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})}
	f.Fuzz(func(t *testing.T, id string, body []byte) {
		b.mu.Lock()
		b.peers = nil // each input registers into an empty set
		b.mu.Unlock()
		req, err := http.NewRequest(http.MethodPut, "http://api"+clusterapi.NodesPrefix+id, bytes.NewReader(body))
		if err != nil {
			return // not a request a client could send
		}
		req.Header.Set("Authorization", "Bearer "+testToken)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		switch {
		case w.Code == http.StatusNoContent:
			peers := b.registered()
			if len(peers) != 1 {
				t.Fatalf("204 but %d peers registered", len(peers))
			}
			var p struct{ ID string }
			_ = json.Unmarshal(body, &p)
			if p.ID != "" && peers[0].ID != p.ID {
				t.Fatalf("registered %q for body id %q", peers[0].ID, p.ID)
			}
		case w.Code >= 500:
			t.Fatalf("PUT %s%q with %q: %d %s", clusterapi.NodesPrefix, id, body, w.Code, w.Body)
		}
	})
}
