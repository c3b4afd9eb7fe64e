package httpapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/sourceraft/sourceraft/fsm"
	"github.com/sourceraft/sourceraft/storage"
)

// forwardedHeader marks a request one replica sent to another, so that it
// is answered from local state only and never forwarded again.
const forwardedHeader = "X-Sourceraft-Forwarded"

type artifactServer struct {
	cfg Config

	repairMu  sync.Mutex
	repairing map[string]bool
}

// NewArtifactServer serves GET and HEAD /<kind>/<namespace>/<name>/<file>
// from the local replica, waiting briefly for apply and then asking peers
// before it answers 404. It also repairs the blob files the backend finds
// corrupt, from a peer's copy.
func NewArtifactServer(cfg Config) *echo.Echo {
	s := &artifactServer{cfg: cfg.withDefaults(), repairing: map[string]bool{}}
	s.cfg.Backend.OnCorrupt(s.repairLater)
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
	k, err := artifactKey(c.Request().URL.EscapedPath())
	defer func() {
		observeServe(k.Identity().Kind, c.Response().Status, time.Since(start).Seconds())
	}()
	if err != nil {
		writePlain(c, http.StatusBadRequest, "invalid artifact path")
		return nil
	}
	content, err := s.cfg.Backend.OpenArtifact(k)
	switch {
	case err == nil:
		s.serveLocal(c, k, content)
	case errors.Is(err, storage.ErrNotFound):
		s.serveMissing(c, k)
	case errors.Is(err, storage.ErrCorrupt):
		s.bodyFailed(c, k, 0, err)
	default:
		s.cfg.Logger.Error("artifact lookup failed", "path", k, "error", err)
		writePlain(c, http.StatusInternalServerError, err.Error())
	}
	return nil
}

// serveMissing covers an artifact this replica has not applied (yet): it
// may be committed but still in flight here, or only on a peer.
func (s *artifactServer) serveMissing(c echo.Context, k storage.Key) {
	r := c.Request()
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.PeerWait)
	content, err := s.cfg.Backend.WaitFor(ctx, k)
	cancel()
	switch {
	case err == nil:
		s.serveLocal(c, k, content)
		return
	case errors.Is(err, storage.ErrCorrupt):
		s.bodyFailed(c, k, 0, err)
		return
	case r.Context().Err() != nil:
		writePlain(c, http.StatusServiceUnavailable, "request canceled")
		return
	case !errors.Is(err, storage.ErrNotFound) && !errors.Is(err, context.DeadlineExceeded):
		s.cfg.Logger.Error("waiting for artifact failed", "path", k, "error", err)
		writePlain(c, http.StatusInternalServerError, err.Error())
		return
	}
	if r.Header.Get(forwardedHeader) != "" {
		writePlain(c, http.StatusNotFound, storage.ErrNotFound.Error())
		return
	}
	s.fromPeers(c, k)
}

func (s *artifactServer) serveLocal(c echo.Context, k storage.Key, content *fsm.Content) {
	defer content.Close()
	a := content.Artifact
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
	if content.Remote && (r.Method != http.MethodHead || isConditional(r.Header)) {
		redirect, err := s.cfg.Backend.OpenRemote(r.Context(), content)
		switch {
		case err != nil:
			s.remoteFailed(c, k, err)
			return
		case redirect != "":
			// The object store checks the signature; the consumer checks
			// the digest it expects, as after any download.
			http.Redirect(w, r, redirect, http.StatusTemporaryRedirect)
			return
		}
	}
	if isConditional(r.Header) {
		// A range cannot stream through the hash: a blob this process
		// has not verified yet is checked whole first.
		if err := content.VerifyNow(); err != nil {
			s.bodyFailed(c, k, 0, err)
			return
		}
		http.ServeContent(sendfileWriter{w}, r, a.File, a.LastUpdateTime, content.Reader())
		return
	}

	size := content.Size()
	vals[2] = strconv.FormatInt(size, 10)
	h["Content-Length"] = vals[2:3:3]
	if r.Method == http.MethodHead {
		w.WriteHeader(http.StatusOK)
		return
	}
	switch {
	case content.Data != nil || size == 0:
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(content.Data)
	case content.Verified():
		w.WriteHeader(http.StatusOK)
		// The known size lets the connection stop after the last chunk
		// instead of asking sendfile once more to find the end.
		if n, err := (sendfileWriter{w}).ReadFrom(io.LimitReader(content.File, size)); err != nil || n != size {
			s.bodyFailed(c, k, n, fmt.Errorf("sent %d of %d bytes: %w", n, size, err))
		}
	default:
		s.sendVerifying(c, k, content)
	}
}

func isConditional(h http.Header) bool {
	return len(h["Range"]) > 0 || len(h["If-None-Match"]) > 0 || len(h["If-Modified-Since"]) > 0 ||
		len(h["If-Match"]) > 0 || len(h["If-Unmodified-Since"]) > 0 || len(h["If-Range"]) > 0
}

// sendfileWriter hands a file to the connection itself: net/http's
// response then lets the kernel copy it to the socket (sendfile), and
// echo still records the status and size.
type sendfileWriter struct{ *echo.Response }

func (w sendfileWriter) ReadFrom(src io.Reader) (int64, error) {
	if !w.Committed {
		w.WriteHeader(http.StatusOK)
	}
	rf, ok := w.Writer.(io.ReaderFrom)
	if !ok {
		return io.Copy(w.Writer, src)
	}
	n, err := rf.ReadFrom(src)
	w.Size += n
	return n, err
}

// sendVerifying is the first download of a blob file by this process: it
// streams through sha256 and always holds the last piece read back until
// the whole file hashed to its blob address (sha256 whatever algorithm the
// artifact's digest is in), so a corrupt file is never served
// complete. One that fits the first read is checked before any byte goes
// out, and a peer answers instead.
func (s *artifactServer) sendVerifying(c echo.Context, k storage.Key, content *fsm.Content) {
	w := c.Response()
	hash := sha256.New()
	bp, np := copyBufs.Get().(*[]byte), copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	defer copyBufs.Put(np)
	var (
		pending []byte
		sent    int64
		spare   = *np
	)
	buf := *bp
	for {
		n, err := io.ReadFull(content.File, buf)
		hash.Write(buf[:n])
		if n > 0 && pending != nil {
			if _, werr := w.Write(pending); werr != nil {
				return // the client went away
			}
			sent += int64(len(pending))
		}
		if n > 0 {
			pending, buf, spare = buf[:n], spare, buf
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			s.bodyFailed(c, k, sent, fmt.Errorf("read blob file: %w", err))
			return
		}
	}
	sum := "sha256:" + hex.EncodeToString(hash.Sum(nil))
	if err := content.Check(sum); err != nil {
		s.bodyFailed(c, k, sent, err)
		return
	}
	if sent+int64(len(pending)) != content.Size() {
		s.bodyFailed(c, k, sent, fmt.Errorf("%w: file has %d of %d bytes", storage.ErrCorrupt, sent+int64(len(pending)), content.Size()))
		return
	}
	_, _ = w.Write(pending)
}

// repairLater starts one repair per corrupt blob at a time.
func (s *artifactServer) repairLater(digest string) {
	s.repairMu.Lock()
	defer s.repairMu.Unlock()
	if s.repairing[digest] {
		return
	}
	s.repairing[digest] = true
	go func() {
		s.repair(digest)
		s.repairMu.Lock()
		delete(s.repairing, digest)
		s.repairMu.Unlock()
	}()
}

// repair fetches a peer's copy of a corrupt blob through the same path as
// a download's peer fallback and hands it to the backend, which writes it
// aside, verifies it and renames it over the bad file.
func (s *artifactServer) repair(digest string) {
	a, err := s.cfg.Backend.ArtifactWithDigest(digest)
	if err != nil {
		s.cfg.Logger.Warn("cannot repair blob: no artifact has it", "digest", digest, "error", err)
		return
	}
	k, err := storage.KeyOf(a)
	if err != nil {
		s.cfg.Logger.Warn("cannot repair blob", "digest", digest, "error", err)
		return
	}
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, "/", nil)
	if err != nil {
		return
	}
	for _, peer := range peerOrder(s.cfg.Backend.Status()) {
		resp, done, err := s.askPeer(req, peer, k)
		if err != nil {
			continue
		}
		if resp.StatusCode != http.StatusOK {
			drain(resp.Body)
			done()
			continue
		}
		err = s.cfg.Backend.RepairBlob(digest, a.Size, resp.Body)
		done()
		if err == nil {
			s.cfg.Logger.Info("repaired blob from a peer", "digest", digest, "peer", peer.ID, "path", k)
			return
		}
		s.cfg.Logger.Warn("repair from peer failed", "digest", digest, "peer", peer.ID, "error", err)
	}
	s.cfg.Logger.Warn("blob corrupt and no peer could repair it", "digest", digest, "path", k)
}

// remoteFailed answers a download whose blob the object store could not
// give: a peer whose cache holds it serves it instead, else 503, which
// consumers retry (the bucket may be back by then). A corrupt object goes
// the way of a corrupt file.
func (s *artifactServer) remoteFailed(c echo.Context, k storage.Key, err error) {
	if errors.Is(err, storage.ErrCorrupt) {
		s.bodyFailed(c, k, 0, err)
		return
	}
	s.cfg.Logger.Error("artifact unreadable from the object store", "path", k, "error", err)
	countError("artifacts", c.Request().Method)
	if !s.peerInstead(c, k) {
		writePlain(c, http.StatusServiceUnavailable, err.Error())
	}
}

// peerInstead serves a peer's copy in place of the local one that failed,
// unless a peer asked: it reports whether one was served.
func (s *artifactServer) peerInstead(c echo.Context, k storage.Key) bool {
	if c.Request().Header.Get(forwardedHeader) != "" {
		return false
	}
	h := c.Response().Header()
	for _, name := range peerResponseHeaders {
		h.Del(name)
	}
	return s.relayFromPeers(c, k) == peersServed
}

// bodyFailed ends a download whose content could not be read. Before any
// byte went out a peer's intact copy is served instead (a 500 if none
// has one); after, the connection is cut so a consumer sees a failed
// download and never a short or wrong artifact.
func (s *artifactServer) bodyFailed(c echo.Context, k storage.Key, sent int64, err error) {
	corrupt := errors.Is(err, storage.ErrCorrupt)
	if !c.Response().Committed {
		s.cfg.Logger.Error("artifact unreadable", "path", k, "error", err)
		countError("artifacts", c.Request().Method)
		if corrupt && s.peerInstead(c, k) {
			return
		}
		writePlain(c, http.StatusInternalServerError, err.Error())
		return
	}
	if corrupt {
		s.cfg.Logger.Error("artifact corrupt mid-download, aborting", "path", k, "sent", sent, "error", err)
		countError("artifacts", c.Request().Method)
	} else {
		s.cfg.Logger.Debug("artifact download interrupted", "path", k, "sent", sent, "error", err)
	}
	panic(http.ErrAbortHandler)
}
