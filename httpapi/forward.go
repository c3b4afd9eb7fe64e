package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/storage"
)

// Request headers passed to a peer so its answer (206, 304, 412, 416) is
// the one this replica would have given with the artifact at hand.
var peerRequestHeaders = [...]string{"Range", "If-None-Match", "If-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range"}

var peerResponseHeaders = [...]string{"Content-Type", "Content-Length", "Etag", "Last-Modified", "Accept-Ranges", "Content-Range"}

// peerOrder lists the peers to ask for an artifact: the leader first, as
// it is the most likely to have applied it, never this replica.
func peerOrder(st clusterapi.Status) []clusterapi.Peer {
	out := make([]clusterapi.Peer, 0, len(st.Peers))
	for _, p := range st.Peers {
		if p.ID != st.NodeID && p.StorageAddr != "" && p.Leader {
			out = append(out, p)
		}
	}
	for _, p := range st.Peers {
		if p.ID != st.NodeID && p.StorageAddr != "" && !p.Leader {
			out = append(out, p)
		}
	}
	return out
}

// fromPeers relays the first peer answer that proves the artifact exists.
// It answers 404 only when the peers that could be asked say so: the
// leader, or all of them; if some could not be reached and none had it,
// the client gets 503 and retries instead of a 404 it would trust.
func (s *artifactServer) fromPeers(c echo.Context, k storage.Key) {
	switch s.relayFromPeers(c, k) {
	case peersServed:
	case peersMissing:
		writePlain(c, http.StatusNotFound, storage.ErrNotFound.Error())
	case peersUnsure:
		c.Response().Header().Set("Retry-After", "1")
		writePlain(c, http.StatusServiceUnavailable, "artifact not applied here and some peers are unreachable")
	}
}

type peersOutcome int

const (
	peersServed peersOutcome = iota
	peersMissing
	peersUnsure
)

// relayFromPeers asks the peers in order and relays the first answer that
// proves the artifact exists; otherwise it writes nothing and says whether
// the peers agree the artifact is missing.
func (s *artifactServer) relayFromPeers(c echo.Context, k storage.Key) peersOutcome {
	r := c.Request()
	st := s.cfg.Backend.Status()
	allAnswered, leaderSaysMissing := true, false
	for _, peer := range peerOrder(st) {
		resp, done, err := s.askPeer(r, peer, k)
		if err != nil {
			if r.Context().Err() != nil {
				writePlain(c, http.StatusServiceUnavailable, "request canceled")
				return peersServed
			}
			s.cfg.Logger.Debug("asking peer for artifact failed", "peer", peer.ID, "path", k, "error", err)
			allAnswered = false
			continue
		}
		switch resp.StatusCode {
		case http.StatusOK, http.StatusPartialContent, http.StatusNotModified,
			http.StatusPreconditionFailed, http.StatusRequestedRangeNotSatisfiable:
			defer done()
			s.relay(c, k, peer, resp)
			return peersServed
		case http.StatusNotFound:
			leaderSaysMissing = leaderSaysMissing || peer.Leader
		default:
			allAnswered = false
		}
		drain(resp.Body)
		done()
	}
	if allAnswered || leaderSaysMissing {
		return peersMissing
	}
	return peersUnsure
}

// askPeer bounds only the wait for response headers, which covers the
// peer's own apply wait; the body may then take as long as it takes. done
// releases the request once the body is consumed.
func (s *artifactServer) askPeer(r *http.Request, peer clusterapi.Peer, k storage.Key) (*http.Response, func(), error) {
	u := url.URL{Scheme: "http", Host: peer.StorageAddr, Path: "/" + k.String()}
	ctx, cancel := context.WithCancel(r.Context())
	req, err := http.NewRequestWithContext(ctx, r.Method, u.String(), nil)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	for _, k := range peerRequestHeaders {
		if v, ok := r.Header[k]; ok {
			req.Header[k] = v
		}
	}
	req.Header.Set(forwardedHeader, "1")
	// Explicit so the transport neither asks for nor undoes compression:
	// the bytes relayed must be the artifact's own.
	req.Header.Set("Accept-Encoding", "identity")
	timer := time.AfterFunc(s.cfg.PeerWait+peerHeaderSlack, cancel)
	resp, err := s.cfg.Client.Do(req)
	if !timer.Stop() && err == nil {
		// The deadline fired as the headers arrived: the body is already cut.
		resp.Body.Close()
		err = fmt.Errorf("peer %s: no response headers within %v", peer.ID, s.cfg.PeerWait+peerHeaderSlack)
	}
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return resp, func() { resp.Body.Close(); cancel() }, nil
}

// peerHeaderSlack is what a peer gets beyond its own apply wait to start
// answering.
const peerHeaderSlack = 3 * time.Second

func (s *artifactServer) relay(c echo.Context, k storage.Key, peer clusterapi.Peer, resp *http.Response) {
	w := c.Response()
	h := w.Header()
	for _, k := range peerResponseHeaders {
		if v, ok := resp.Header[k]; ok {
			h[k] = v
		}
	}
	w.WriteHeader(resp.StatusCode)
	if c.Request().Method == http.MethodHead || resp.StatusCode == http.StatusNotModified {
		return
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return // the client went away
			}
		}
		if rerr == io.EOF {
			return
		}
		if rerr != nil {
			if c.Request().Context().Err() != nil {
				return // the client went away and took the peer request with it
			}
			s.cfg.Logger.Error("peer failed mid-download, aborting", "peer", peer.ID, "path", k, "error", rerr)
			countError("artifacts", c.Request().Method)
			panic(http.ErrAbortHandler)
		}
	}
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// drain reads a little of a body we do not use so the connection can be reused.
func drain(body io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(body, 64<<10))
}

// hopHeaders are meaningful for one connection only and are not relayed.
var hopHeaders = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true, "Proxy-Authorization": true,
	"Proxy-Connection": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
	"Expect": true, "Content-Length": true, "Host": true,
}

// forwardToLeader replays an internal API write on the leader and relays
// its answer, headers (the bearer token among them) included. apiPath is
// escaped, as clusterapi's path builders return it; body must be unread,
// nil for requests without one.
func (s *apiServer) forwardToLeader(c echo.Context, apiPath string, body io.Reader, length int64) error {
	r := c.Request()
	if r.Header.Get(forwardedHeader) != "" {
		return echo.NewHTTPError(http.StatusServiceUnavailable, "not the leader (forwarded request): "+storage.ErrNotLeader.Error())
	}
	st := s.cfg.Backend.Status()
	leader, ok := st.Leader()
	if !ok || leader.APIAddr == "" || leader.ID == st.NodeID {
		return echo.NewHTTPError(http.StatusServiceUnavailable, "no leader known")
	}
	if body == nil || length == 0 {
		body, length = http.NoBody, 0
	}
	req, err := http.NewRequestWithContext(r.Context(), r.Method, clusterapi.URL(leader.APIAddr, apiPath), body)
	if err != nil {
		return err
	}
	req.ContentLength = length // -1 streams it chunked
	copyHeaders(req.Header, r.Header)
	req.Header.Set(forwardedHeader, "1")

	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		if lb, ok := body.(*limitedBody); ok && lb.exceeded.Load() {
			return fmt.Errorf("%w: limit %d bytes", storage.ErrTooLarge, s.cfg.MaxArtifactSize)
		}
		if lb, ok := body.(*limitedBody); ok && lb.readErr() != nil {
			// The leader saw the forwarded body end early and aborts the upload.
			s.cfg.Logger.Warn("upload body ended early while forwarded to the leader", "path", apiPath, "leader", leader.ID, "error", lb.readErr())
			return fmt.Errorf("%w: reading request body: %w", storage.ErrIncomplete, lb.readErr())
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		return echo.NewHTTPError(http.StatusServiceUnavailable, "forwarding to leader "+leader.ID+": "+err.Error())
	}
	defer resp.Body.Close()
	w := c.Response()
	copyHeaders(w.Header(), resp.Header)
	if resp.ContentLength >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
	return nil
}

func copyHeaders(dst, src http.Header) {
	for k, v := range src {
		if !hopHeaders[k] {
			dst[k] = append([]string(nil), v...)
		}
	}
}
