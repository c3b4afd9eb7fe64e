package httpapi

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"

	"github.com/labstack/echo/v4"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/raftstore"
	"github.com/sourceraft/sourceraft/storage"
)

type apiServer struct {
	cfg Config
	// want is the hash of the expected Authorization header, so the
	// comparison takes the same time whatever the length of a guess.
	want [sha256.Size]byte
}

// NewAPIServer serves the bearer-token internal API on clusterapi's
// routes: the cluster status, the content hash, artifact PUT and DELETE,
// node registration and removal. Writes that reach a follower are
// forwarded to the leader.
func NewAPIServer(cfg Config) *echo.Echo {
	s := &apiServer{cfg: cfg.withDefaults()}
	s.want = sha256.Sum256([]byte(clusterapi.Authorization(cfg.APIToken)))
	e := newEcho(jsonErrorHandler)
	e.Use(countRequests("api"), s.authenticate)
	e.GET(clusterapi.ClusterPath, s.cluster)
	e.GET(clusterapi.ContentHashPath, s.contentHash)
	e.PUT(clusterapi.ArtifactsPrefix+"*", s.put)
	e.DELETE(clusterapi.ArtifactsPrefix+"*", s.delete)
	e.PUT(clusterapi.NodesPrefix+":id", s.registerPeer)
	e.DELETE(clusterapi.NodesPrefix+":id", s.removePeer)
	return e
}

func (s *apiServer) authenticate(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		got := sha256.Sum256([]byte(c.Request().Header.Get("Authorization")))
		if s.cfg.APIToken == "" || subtle.ConstantTimeCompare(got[:], s.want[:]) != 1 {
			c.Response().Header().Set("WWW-Authenticate", `Bearer realm="sourceraft"`)
			return echo.NewHTTPError(http.StatusUnauthorized, "missing or invalid bearer token")
		}
		return next(c)
	}
}

func (s *apiServer) cluster(c echo.Context) error {
	return c.JSON(http.StatusOK, s.cfg.Backend.Status())
}

func (s *apiServer) contentHash(c echo.Context) error {
	h, err := s.cfg.Backend.ContentHash()
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, h)
}

func (s *apiServer) put(c echo.Context) error {
	r := c.Request()
	p, a, err := apiArtifactPath(r)
	if err != nil {
		return err
	}
	limit := s.cfg.MaxArtifactSize
	if limit > 0 && r.ContentLength > limit {
		return fmt.Errorf("%w: %d bytes, limit %d", storage.ErrTooLarge, r.ContentLength, limit)
	}
	body := &limitedBody{r: r.Body, max: limit}
	if s.otherLeads() {
		return s.forwardToLeader(c, clusterapi.ArtifactPath(p), body, r.ContentLength)
	}
	a.Revision = r.Header.Get(clusterapi.RevisionHeader)
	// net/http fails a body cut short of its Content-Length; the store
	// checks the length again, whatever reader sits in between.
	a.ExpectedSize = r.ContentLength
	// A preset digest makes Store refuse, without committing, content that
	// does not hash to it.
	a.Digest = r.Header.Get(clusterapi.DigestHeader)
	err = s.cfg.Backend.Store(r.Context(), &a, body)
	switch {
	case body.exceeded.Load():
		return fmt.Errorf("%w: limit %d bytes", storage.ErrTooLarge, limit)
	case errors.Is(err, storage.ErrNotLeader) && body.n.Load() == 0:
		return s.forwardToLeader(c, clusterapi.ArtifactPath(p), body, r.ContentLength)
	case errors.Is(err, storage.ErrNotLeader):
		return echo.NewHTTPError(http.StatusServiceUnavailable, "leadership lost during upload, retry")
	case err != nil:
		return err
	}
	return c.JSON(http.StatusCreated, clusterapi.PutResult{
		Path:     a.Path(),
		Digest:   a.Digest,
		Size:     a.Size,
		Revision: a.Revision,
		URL:      s.artifactURL(a),
	})
}

func (s *apiServer) delete(c echo.Context) error {
	r := c.Request()
	p, a, err := apiArtifactPath(r)
	if err != nil {
		return err
	}
	if s.otherLeads() {
		return s.forwardToLeader(c, clusterapi.ArtifactPath(p), nil, 0)
	}
	err = s.cfg.Backend.Delete(r.Context(), a)
	if errors.Is(err, storage.ErrNotLeader) {
		return s.forwardToLeader(c, clusterapi.ArtifactPath(p), nil, 0)
	}
	if err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

// maxPeerBody bounds a node registration, a few short addresses.
const maxPeerBody = 64 << 10

// registerPeer records a replica's addresses: followers cannot write the
// log themselves, so they call this on the leader.
func (s *apiServer) registerPeer(c echo.Context) error {
	r := c.Request()
	id, err := url.PathUnescape(c.Param("id"))
	if err != nil || id == "" {
		return echo.NewHTTPError(http.StatusBadRequest, "invalid node id")
	}
	raw, err := io.ReadAll(io.LimitReader(r.Body, maxPeerBody+1))
	if err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, "reading body: "+err.Error())
	}
	if len(raw) > maxPeerBody {
		return echo.NewHTTPError(http.StatusRequestEntityTooLarge, "node registration too large")
	}
	var p clusterapi.Peer
	if err := json.Unmarshal(raw, &p); err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, "invalid peer JSON: "+err.Error())
	}
	if p.ID == "" {
		p.ID = id
	}
	if p.ID != id {
		return echo.NewHTTPError(http.StatusBadRequest, fmt.Sprintf("body id %q differs from path id %q", p.ID, id))
	}
	apiPath := clusterapi.NodePath(id)
	if s.otherLeads() {
		return s.forwardToLeader(c, apiPath, bytes.NewReader(raw), int64(len(raw)))
	}
	err = s.cfg.Backend.RegisterPeer(r.Context(), p)
	if errors.Is(err, storage.ErrNotLeader) {
		return s.forwardToLeader(c, apiPath, bytes.NewReader(raw), int64(len(raw)))
	}
	if err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

// removePeer takes a replica out of the cluster: the scale-down step for
// replicas whose pods are gone.
func (s *apiServer) removePeer(c echo.Context) error {
	id, err := url.PathUnescape(c.Param("id"))
	if err != nil || id == "" {
		return echo.NewHTTPError(http.StatusBadRequest, "invalid node id")
	}
	apiPath := clusterapi.NodePath(id)
	if s.otherLeads() {
		return s.forwardToLeader(c, apiPath, nil, 0)
	}
	err = s.cfg.Backend.RemovePeer(c.Request().Context(), id)
	switch {
	case errors.Is(err, storage.ErrNotLeader):
		return s.forwardToLeader(c, apiPath, nil, 0)
	case errors.Is(err, raftstore.ErrLeaderRemoval):
		return echo.NewHTTPError(http.StatusServiceUnavailable, err.Error())
	case err != nil:
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

// otherLeads reports whether another replica is known to lead. Checking
// before Store keeps the body unread, so it can still be forwarded.
func (s *apiServer) otherLeads() bool {
	st := s.cfg.Backend.Status()
	return st.LeaderID != "" && st.LeaderID != st.NodeID
}

// artifactURL is where consumers fetch the artifact: the configured
// advertised address, else this replica's registered one, else a
// path-relative URL.
func (s *apiServer) artifactURL(a storage.Artifact) string {
	if s.cfg.StorageAdvAddr != "" {
		return a.URL(s.cfg.StorageAdvAddr)
	}
	st := s.cfg.Backend.Status()
	for _, p := range st.Peers {
		if p.ID == st.NodeID && p.StorageAddr != "" {
			return a.URL(p.StorageAddr)
		}
	}
	return "/" + a.Path()
}

// apiArtifactPath is the artifact a PUT or DELETE names, held to the
// rules of new artifacts (storage.ParseWritePath).
func apiArtifactPath(r *http.Request) (string, storage.Artifact, error) {
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), clusterapi.ArtifactsPrefix)
	if !ok {
		return "", storage.Artifact{}, storage.ErrInvalidPath
	}
	k, err := artifactKey(rest)
	if err != nil {
		return "", storage.Artifact{}, err
	}
	a := k.Identity()
	return k.String(), a, a.ValidateNew()
}

// limitedBody fails with storage.ErrTooLarge once more than max bytes
// arrive, for bodies without a Content-Length, and remembers a read
// failure of the client's body so that a forward cut short by it is
// answered as the client's fault. Its fields are atomic because a
// forwarded body is read by the transport's goroutine.
type limitedBody struct {
	r        io.Reader
	max      int64 // <= 0: unlimited
	n        atomic.Int64
	exceeded atomic.Bool
	failed   atomic.Pointer[error]
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.exceeded.Load() {
		return 0, storage.ErrTooLarge
	}
	if b.max > 0 {
		if rem := b.max + 1 - b.n.Load(); int64(len(p)) > rem {
			p = p[:rem]
		}
	}
	n, err := b.r.Read(p)
	total := b.n.Add(int64(n))
	if b.max > 0 && total > b.max {
		b.exceeded.Store(true)
		return n - int(total-b.max), storage.ErrTooLarge
	}
	if err != nil && err != io.EOF {
		b.failed.CompareAndSwap(nil, &err)
	}
	return n, err
}

// readErr is the client body's read failure, nil while it reads cleanly.
func (b *limitedBody) readErr() error {
	if p := b.failed.Load(); p != nil {
		return *p
	}
	return nil
}
