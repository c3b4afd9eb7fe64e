package httpapi

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/sourceraft/sourceraft/fsm"
	"github.com/sourceraft/sourceraft/storage"
)

// discardWriter is a ResponseWriter with no cost of its own, so the
// benchmark measures the handler's work and allocations only.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(int)             {}

func benchServe(b *testing.B, h http.Handler, target string, size int) {
	req := httptest.NewRequest(http.MethodGet, target, nil)
	w := &discardWriter{h: http.Header{}}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, req)
	}
}

func BenchmarkArtifactGET(b *testing.B) {
	be := newMemBackend(b, "a")
	data := randomBytes(1<<20, 40)
	be.put(artPath, data)
	be.asked = nil
	h := NewArtifactServer(Config{Backend: benchBackend{be}})
	benchServe(b, h, "/"+artPath, len(data))
}

func BenchmarkFileServerGET(b *testing.B) {
	dir := b.TempDir()
	p := filepath.Join(dir, "a.tar.gz")
	if err := os.WriteFile(p, randomBytes(1<<20, 40), 0o644); err != nil {
		b.Fatal(err)
	}
	benchServe(b, http.FileServer(http.Dir(dir)), "/a.tar.gz", 1<<20)
}

// benchBackend skips the test double's bookkeeping of asked paths, which
// would otherwise grow without bound over b.N requests.
type benchBackend struct{ *memBackend }

func (b benchBackend) OpenArtifact(k storage.Key) (*fsm.Content, error) {
	return b.f.Open(k)
}

// Over loopback with concurrent clients, as consumers fetch: the artifact
// server against http.FileServer on the same bytes.
func benchLoopback(b *testing.B, h http.Handler, target string, size int) {
	srv := httptest.NewServer(h)
	defer srv.Close()
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	b.SetBytes(int64(size))
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 256<<10)
		for pb.Next() {
			resp, err := client.Get(srv.URL + target)
			if err != nil {
				b.Error(err)
				return
			}
			n, _ := io.CopyBuffer(io.Discard, resp.Body, buf)
			resp.Body.Close()
			if n != int64(size) {
				b.Errorf("got %d bytes", n)
				return
			}
		}
	})
}

func BenchmarkArtifactLoopback(b *testing.B) {
	be := newMemBackend(b, "a")
	data := randomBytes(1<<20, 40)
	be.put(artPath, data)
	benchLoopback(b, NewArtifactServer(Config{Backend: benchBackend{be}}), "/"+artPath, len(data))
}

func BenchmarkFileServerLoopback(b *testing.B) {
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.tar.gz"), randomBytes(1<<20, 40), 0o644); err != nil {
		b.Fatal(err)
	}
	benchLoopback(b, http.FileServer(http.Dir(dir)), "/a.tar.gz", 1<<20)
}
