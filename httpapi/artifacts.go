package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/sourceraft/sourceraft/storage"
)

// forwardedHeader marks a request one replica sent to another, so that it
// is answered from local state only and never forwarded again.
const forwardedHeader = "X-Sourceraft-Forwarded"

type artifactServer struct {
	cfg Config
}

// NewArtifactServer serves GET and HEAD /<kind>/<namespace>/<name>/<file>
// from the local replica, waiting briefly for apply and then asking peers
// before it answers 404.
func NewArtifactServer(cfg Config) *echo.Echo {
	s := &artifactServer{cfg: cfg.withDefaults()}
	e := newEcho(plainErrorHandler)
	// One catch-all route, its middleware applied once here: echo builds
	// the chain of e.Use and route middleware anew on every request.
	e.Any("/*", countRequests("artifacts")(s.handle))
	return e
}

// Shared, never mutated: assigning them saves an allocation per request.
var (
	gzipType     = []string{"application/gzip"}
	octetType    = []string{"application/octet-stream"}
	acceptRanges = []string{"bytes"}
	allowGetHead = []string{"GET, HEAD"}
)

func (s *artifactServer) handle(c echo.Context) error {
	start := time.Now()
	if m := c.Request().Method; m != http.MethodGet && m != http.MethodHead {
		c.Response().Header()["Allow"] = allowGetHead
		writePlain(c, http.StatusMethodNotAllowed, "only GET and HEAD")
		return nil
	}
	p, parsed, err := artifactPath(c.Request().URL.EscapedPath())
	defer func() {
		observeServe(parsed.Kind, c.Response().Status, time.Since(start).Seconds())
	}()
	if err != nil {
		writePlain(c, http.StatusBadRequest, "invalid artifact path")
		return nil
	}
	a, err := s.cfg.Backend.Lookup(p)
	switch {
	case err == nil:
		s.serveLocal(c, p, a)
	case errors.Is(err, storage.ErrNotFound):
		s.serveMissing(c, p)
	default:
		s.cfg.Logger.Error("artifact lookup failed", "path", p, "error", err)
		writePlain(c, http.StatusInternalServerError, err.Error())
	}
	return nil
}

// serveMissing covers an artifact this replica has not applied (yet): it
// may be committed but still in flight here, or only on a peer.
func (s *artifactServer) serveMissing(c echo.Context, p string) {
	r := c.Request()
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.PeerWait)
	a, err := s.cfg.Backend.WaitFor(ctx, p)
	cancel()
	switch {
	case err == nil:
		s.serveLocal(c, p, a)
		return
	case r.Context().Err() != nil:
		writePlain(c, http.StatusServiceUnavailable, "request canceled")
		return
	case !errors.Is(err, storage.ErrNotFound) && !errors.Is(err, context.DeadlineExceeded):
		s.cfg.Logger.Error("waiting for artifact failed", "path", p, "error", err)
		writePlain(c, http.StatusInternalServerError, err.Error())
		return
	}
	if r.Header.Get(forwardedHeader) != "" {
		writePlain(c, http.StatusNotFound, storage.ErrNotFound.Error())
		return
	}
	s.fromPeers(c, p)
}

func (s *artifactServer) serveLocal(c echo.Context, p string, a storage.Artifact) {
	blob, err := s.cfg.Backend.OpenBlob(a)
	if err != nil {
		code := statusOf(err)
		if code >= 500 {
			s.cfg.Logger.Error("opening artifact failed", "path", p, "error", err)
		}
		writePlain(c, code, err.Error())
		return
	}
	defer blob.Close()

	w := c.Response()
	r := c.Request()
	h := w.Header()
	if strings.HasSuffix(a.File, ".tar.gz") || strings.HasSuffix(a.File, ".tgz") {
		h["Content-Type"] = gzipType
	} else {
		h["Content-Type"] = octetType
	}
	h["Accept-Ranges"] = acceptRanges
	// One backing array for the per-request header values instead of three.
	vals := new([3]string)
	if a.Digest != "" {
		vals[0] = `"` + a.Digest + `"`
		// "Etag" is the canonical key http.ServeContent looks up.
		h["Etag"] = vals[0:1:1]
	}
	if !a.LastUpdateTime.IsZero() {
		vals[1] = a.LastUpdateTime.UTC().Format(http.TimeFormat)
		h["Last-Modified"] = vals[1:2:2]
	}
	if isConditional(r.Header) {
		s.serveContent(c, p, a, blob)
		return
	}

	size := blob.Size()
	vals[2] = strconv.FormatInt(size, 10)
	h["Content-Length"] = vals[2:3:3]
	if r.Method == http.MethodHead {
		w.WriteHeader(http.StatusOK)
		return
	}
	// No explicit WriteHeader: the status goes out with the first chunk,
	// so corruption found in chunk 0 can still be served from a peer.
	n, err := blob.WriteTo(w)
	if err == nil && n != size {
		err = fmt.Errorf("%w: wrote %d of %d bytes", storage.ErrCorrupt, n, size)
	}
	if err != nil {
		s.bodyFailed(c, p, n, err)
		return
	}
	if !w.Committed {
		w.WriteHeader(http.StatusOK) // empty blob
	}
}

func isConditional(h http.Header) bool {
	return len(h["Range"]) > 0 || len(h["If-None-Match"]) > 0 || len(h["If-Modified-Since"]) > 0 ||
		len(h["If-Match"]) > 0 || len(h["If-Unmodified-Since"]) > 0 || len(h["If-Range"]) > 0
}

func (s *artifactServer) serveContent(c echo.Context, p string, a storage.Artifact, blob storage.Blob) {
	cr := &checkedReader{rs: blob}
	// ServeContent may leave its multi-range goroutine reading after it
	// returns; closing cr first makes that goroutine stop before the
	// deferred blob.Close.
	defer cr.close()
	http.ServeContent(c.Response(), c.Request(), a.File, a.LastUpdateTime, cr)
	if err := cr.failure(); err != nil {
		s.bodyFailed(c, p, -1, err)
	}
}

// bodyFailed ends a download whose content could not be read. Before any
// byte went out a peer's intact copy is served instead (a 500 if none
// has one); after, the connection is cut so a consumer sees a failed
// download and never a short or wrong artifact.
func (s *artifactServer) bodyFailed(c echo.Context, p string, sent int64, err error) {
	corrupt := errors.Is(err, storage.ErrCorrupt)
	if !c.Response().Committed {
		s.cfg.Logger.Error("artifact unreadable", "path", p, "error", err)
		countError("artifacts", c.Request().Method)
		if corrupt && c.Request().Header.Get(forwardedHeader) == "" {
			h := c.Response().Header()
			for _, k := range peerResponseHeaders {
				h.Del(k)
			}
			if s.relayFromPeers(c, p) == peersServed {
				return
			}
		}
		writePlain(c, http.StatusInternalServerError, err.Error())
		return
	}
	if corrupt {
		s.cfg.Logger.Error("artifact corrupt mid-download, aborting", "path", p, "sent", sent, "error", err)
		countError("artifacts", c.Request().Method)
	} else {
		s.cfg.Logger.Debug("artifact download interrupted", "path", p, "sent", sent, "error", err)
	}
	panic(http.ErrAbortHandler)
}

// checkedReader remembers why http.ServeContent, which swallows read
// errors, stopped reading.
type checkedReader struct {
	mu     sync.Mutex
	rs     io.ReadSeeker
	err    error
	closed bool
}

var errReaderClosed = errors.New("reader closed")

func (r *checkedReader) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, errReaderClosed
	}
	n, err := r.rs.Read(p)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}

func (r *checkedReader) Seek(offset int64, whence int) (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, errReaderClosed
	}
	return r.rs.Seek(offset, whence)
}

func (r *checkedReader) failure() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

func (r *checkedReader) close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
}
