package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/storage"
)

var bearer = map[string]string{"Authorization": "Bearer " + testToken}

func withHeaders(base map[string]string, kv ...string) map[string]string {
	out := map[string]string{}
	for k, v := range base {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

func decodeError(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error == "" {
		t.Errorf("error body %q is not {\"error\": ...}", body)
	}
	return e.Error
}

func TestAPIAuth(t *testing.T) {
	n := startNode(t, "a", nil)
	open := startNode(t, "b", func(c *Config) { c.APIToken = "" })
	cases := []struct {
		addr string
		hdr  map[string]string
	}{
		{n.api, nil},
		{n.api, map[string]string{"Authorization": "Bearer wrong"}},
		{n.api, map[string]string{"Authorization": testToken}},
		{n.api, map[string]string{"Authorization": "Basic " + testToken}},
		{open.api, map[string]string{"Authorization": "Bearer "}},
		{open.api, map[string]string{"Authorization": "Bearer " + testToken}},
	}
	for i, c := range cases {
		for _, m := range []string{http.MethodGet + " " + clusterapi.ClusterPath, http.MethodGet + " " + clusterapi.ContentHashPath, http.MethodPut + " " + clusterapi.ArtifactsPrefix + artPath, http.MethodDelete + " " + clusterapi.ArtifactsPrefix + artPath, http.MethodGet + " /nope"} {
			method, path, _ := strings.Cut(m, " ")
			resp, body := do(t, method, "http://"+c.addr+path, strings.NewReader("data"), c.hdr)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("case %d %s: %d, want 401", i, m, resp.StatusCode)
				continue
			}
			decodeError(t, body)
		}
	}
	if n.b.stores.Load() != 0 || open.b.stores.Load() != 0 {
		t.Errorf("an unauthenticated PUT reached Store")
	}
}

func TestAPICluster(t *testing.T) {
	f, l := twoNodes(t, nil)
	resp, body := do(t, http.MethodGet, "http://"+f.api+clusterapi.ClusterPath, nil, bearer)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("cluster: %d %s", resp.StatusCode, body)
	}
	var st clusterapi.Status
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatal(err)
	}
	if leader, ok := st.Leader(); st.NodeID != "a" || !ok || leader.ID != l.id || len(st.Peers) != 2 {
		t.Errorf("cluster status %+v", st)
	}
}

func TestAPIContentHash(t *testing.T) {
	a := startNode(t, "a", nil)
	b := startNode(t, "b", nil)
	hash := func(n *testNode) clusterapi.ContentHash {
		t.Helper()
		resp, body := do(t, http.MethodGet, "http://"+n.api+clusterapi.ContentHashPath, nil, bearer)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("content hash: %d %s", resp.StatusCode, body)
		}
		var h clusterapi.ContentHash
		if err := json.Unmarshal(body, &h); err != nil {
			t.Fatal(err)
		}
		return h
	}
	a.b.put(artPath, []byte("same"))
	b.b.put(artPath, []byte("same"))
	if ha, hb := hash(a), hash(b); ha.Hash == "" || ha.Hash != hb.Hash || ha.NodeID != "a" {
		t.Errorf("same content: %+v and %+v", ha, hb)
	}
	b.b.put(artPath, []byte("other"))
	if ha, hb := hash(a), hash(b); ha.Hash == hb.Hash {
		t.Errorf("different content, same hash %s", ha.Hash)
	}
}

func TestAPIPut(t *testing.T) {
	n := startNode(t, "a", func(c *Config) { c.StorageAdvAddr = "source-controller.flux-system.svc" })
	data := randomBytes(150<<10, 20)
	resp, body := do(t, http.MethodPut, "http://"+n.api+clusterapi.ArtifactsPrefix+artPath, bytes.NewReader(data),
		withHeaders(bearer, "X-Artifact-Revision", "main@sha1:abc", "X-Artifact-Digest", digestOf(data)))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT: %d %s", resp.StatusCode, body)
	}
	var got map[string]any
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"path": artPath, "digest": digestOf(data), "size": float64(len(data)), "revision": "main@sha1:abc",
		"url": "http://source-controller.flux-system.svc/" + artPath,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	resp, body = do(t, http.MethodGet, "http://"+n.artifact+"/"+artPath, nil, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Errorf("GET after PUT: %d, %d bytes", resp.StatusCode, len(body))
	}
}

func TestAPIPutURLFromStatus(t *testing.T) {
	f, l := twoNodes(t, nil)
	_ = f
	resp, body := do(t, http.MethodPut, "http://"+l.api+clusterapi.ArtifactsPrefix+artPath, strings.NewReader("x"), bearer)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT: %d %s", resp.StatusCode, body)
	}
	var got clusterapi.PutResult
	_ = json.Unmarshal(body, &got)
	if got.URL != "http://"+l.artifact+"/"+artPath {
		t.Errorf("url %q", got.URL)
	}
}

// hideLength makes the client stream the body chunked, without Content-Length.
type hideLength struct{ r io.Reader }

func (h hideLength) Read(p []byte) (int, error) { return h.r.Read(p) }

func TestAPIPutTooLarge(t *testing.T) {
	n := startNode(t, "a", func(c *Config) { c.MaxArtifactSize = 64 << 10 })
	data := randomBytes(100<<10, 21)
	url := "http://" + n.api + clusterapi.ArtifactsPrefix + artPath
	for name, body := range map[string]io.Reader{
		"with Content-Length":    bytes.NewReader(data),
		"without Content-Length": hideLength{bytes.NewReader(data)},
	} {
		resp, rb := do(t, http.MethodPut, url, body, bearer)
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("%s: %d %s, want 413", name, resp.StatusCode, rb)
			continue
		}
		decodeError(t, rb)
		if n.b.has(artPath) {
			t.Errorf("%s: oversized artifact stored", name)
		}
	}
	// Exactly at the limit is fine.
	resp, rb := do(t, http.MethodPut, url, hideLength{bytes.NewReader(data[:64<<10])}, bearer)
	if resp.StatusCode != http.StatusCreated {
		t.Errorf("at the limit: %d %s", resp.StatusCode, rb)
	}
}

func TestAPIPutDigestMismatch(t *testing.T) {
	n := startNode(t, "a", nil)
	resp, body := do(t, http.MethodPut, "http://"+n.api+clusterapi.ArtifactsPrefix+artPath, strings.NewReader("content"),
		withHeaders(bearer, "X-Artifact-Digest", digestOf([]byte("other"))))
	if resp.StatusCode != http.StatusUnprocessableEntity {
		t.Fatalf("wrong digest: %d %s, want 422", resp.StatusCode, body)
	}
	if msg := decodeError(t, body); !strings.Contains(msg, storage.ErrDigestMismatch.Error()) {
		t.Errorf("error %q", msg)
	}
	if n.b.has(artPath) {
		t.Errorf("artifact with the wrong digest stored")
	}
}

func TestAPIPutBadPath(t *testing.T) {
	n := startNode(t, "a", nil)
	for _, p := range []string{"a/b/c", "a/b/c/d/e", "a/b/c/..%2fd", "a/b/%2e%2e/d"} {
		resp, body := do(t, http.MethodPut, "http://"+n.api+clusterapi.ArtifactsPrefix+p, strings.NewReader("x"), bearer)
		if resp.StatusCode != http.StatusBadRequest && resp.StatusCode != http.StatusNotFound {
			t.Errorf("PUT %q: %d %s", p, resp.StatusCode, body)
		}
	}
	if n.b.stores.Load() != 0 {
		t.Errorf("a bad path reached Store")
	}
}

func TestAPIPutForwardsToLeader(t *testing.T) {
	f, l := twoNodes(t, nil)
	data := randomBytes(200<<10, 22)
	for name, body := range map[string]func() io.Reader{
		"with Content-Length":    func() io.Reader { return bytes.NewReader(data) },
		"without Content-Length": func() io.Reader { return hideLength{bytes.NewReader(data)} },
	} {
		resp, rb := do(t, http.MethodPut, "http://"+f.api+clusterapi.ArtifactsPrefix+artPath, body(),
			withHeaders(bearer, "X-Artifact-Revision", "v1"))
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("%s: PUT on follower: %d %s", name, resp.StatusCode, rb)
		}
		var got clusterapi.PutResult
		_ = json.Unmarshal(rb, &got)
		if got.Digest != digestOf(data) || got.Revision != "v1" || got.URL != "http://"+l.artifact+"/"+artPath {
			t.Errorf("%s: forwarded answer %+v", name, got)
		}
		if !l.b.has(artPath) || f.b.has(artPath) {
			t.Errorf("%s: stored on leader %v, on follower %v", name, l.b.has(artPath), f.b.has(artPath))
		}
	}

	// Oversized bodies stop at the follower.
	resp, _ := do(t, http.MethodPut, "http://"+f.api+clusterapi.ArtifactPath("bucket/ns/big/x.tar.gz"), bytes.NewReader(make([]byte, 2<<20)), bearer)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized PUT on follower: %d", resp.StatusCode)
	}
}

func TestAPIPutNoLeader(t *testing.T) {
	f, l := twoNodes(t, nil)
	formCluster(nil, f, l)
	resp, body := do(t, http.MethodPut, "http://"+f.api+clusterapi.ArtifactsPrefix+artPath, strings.NewReader("x"), bearer)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" {
		t.Errorf("no leader: %d %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	decodeError(t, body)
}

func TestAPIForwardedNotReforwarded(t *testing.T) {
	f, l := twoNodes(t, nil)
	resp, body := do(t, http.MethodPut, "http://"+f.api+clusterapi.ArtifactsPrefix+artPath, strings.NewReader("x"),
		withHeaders(bearer, forwardedHeader, "1"))
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("forwarded PUT on follower: %d %s, want 503", resp.StatusCode, body)
	}
	if l.b.stores.Load() != 0 {
		t.Errorf("forwarded PUT was forwarded again")
	}
}

func TestAPIDelete(t *testing.T) {
	f, l := twoNodes(t, []byte("x"))
	url := clusterapi.ArtifactsPrefix + artPath
	resp, body := do(t, http.MethodDelete, "http://"+f.api+url, nil, bearer)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE via follower: %d %s", resp.StatusCode, body)
	}
	if l.b.has(artPath) {
		t.Errorf("artifact still on the leader")
	}
	resp, body = do(t, http.MethodDelete, "http://"+l.api+url, nil, bearer)
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("DELETE unknown: %d %s", resp.StatusCode, body)
	}
	decodeError(t, body)
}

func TestAPIRegisterPeer(t *testing.T) {
	f, l := twoNodes(t, nil)
	p := clusterapi.Peer{ID: "c", RaftAddr: "c:7000", APIAddr: "c:9091", StorageAddr: "c:9090"}
	raw, _ := json.Marshal(p)
	resp, body := do(t, http.MethodPut, "http://"+f.api+clusterapi.NodePath("c"), bytes.NewReader(raw), bearer)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("register via follower: %d %s", resp.StatusCode, body)
	}
	if got := l.b.registered(); len(got) != 1 || got[0] != p {
		t.Errorf("leader registered %+v", got)
	}
	resp, _ = do(t, http.MethodPut, "http://"+l.api+clusterapi.NodePath("d"), bytes.NewReader(raw), bearer)
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("id mismatch: %d", resp.StatusCode)
	}
	resp, _ = do(t, http.MethodPut, "http://"+l.api+clusterapi.NodePath("c"), strings.NewReader("{"), bearer)
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("bad JSON: %d", resp.StatusCode)
	}
}

func TestAPIRemovePeer(t *testing.T) {
	f, l := twoNodes(t, nil)
	raw, _ := json.Marshal(clusterapi.Peer{ID: "c", RaftAddr: "c:7000"})
	if resp, body := do(t, http.MethodPut, "http://"+l.api+clusterapi.NodePath("c"), bytes.NewReader(raw), bearer); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("register: %d %s", resp.StatusCode, body)
	}
	resp, body := do(t, http.MethodDelete, "http://"+f.api+clusterapi.NodePath("c"), nil, bearer)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("remove via follower: %d %s", resp.StatusCode, body)
	}
	if got := l.b.registered(); len(got) != 0 {
		t.Errorf("leader still has %+v", got)
	}
	resp, _ = do(t, http.MethodDelete, "http://"+l.api+clusterapi.NodePath("c"), nil, nil)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("unauthenticated remove: %d", resp.StatusCode)
	}
}

// clusterapi's Client against the server, every call through a follower:
// writes reach the leader, and a node id that needs escaping ("%", "/")
// arrives there as it was sent.
func TestAPIClientThroughFollower(t *testing.T) {
	f, l := twoNodes(t, nil)
	c := clusterapi.NewClient(nil, testToken)
	ctx := context.Background()
	p := clusterapi.Peer{ID: "pods/c%41", RaftAddr: "c:7000", APIAddr: "c:9091", StorageAddr: "c:9090", Fresh: true}
	if err := c.Register(ctx, f.api, p); err != nil {
		t.Fatalf("register: %v", err)
	}
	if got := l.b.registered(); len(got) != 1 || got[0] != p {
		t.Errorf("leader registered %+v", got)
	}
	res, err := c.PutArtifact(ctx, f.api, artPath, strings.NewReader("x"), 1)
	if err != nil {
		t.Fatalf("put: %v", err)
	}
	if res.Path != artPath || res.Digest != digestOf([]byte("x")) || res.URL != "http://"+l.artifact+"/"+artPath || !l.b.has(artPath) {
		t.Errorf("put answered %+v, on the leader: %v", res, l.b.has(artPath))
	}
	st, err := c.Status(ctx, f.api)
	if leader, ok := st.Leader(); err != nil || st.NodeID != f.id || !ok || leader.ID != l.id {
		t.Errorf("status %+v, %v", st, err)
	}
	if h, err := c.ContentHash(ctx, l.api); err != nil || h.NodeID != l.id || h.Hash == "" {
		t.Errorf("content hash %+v, %v", h, err)
	}
	if err := c.RemoveNode(ctx, f.api, p.ID); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if got := l.b.registered(); len(got) != 0 {
		t.Errorf("leader still has %+v", got)
	}
	if err := clusterapi.NewClient(nil, "wrong").RemoveNode(ctx, f.api, "c"); clusterapi.StatusCode(err) != http.StatusUnauthorized {
		t.Errorf("wrong token: %v, want 401", err)
	}
	if _, err := c.PutArtifact(ctx, f.api, "a/b/c", strings.NewReader("x"), 1); clusterapi.StatusCode(err) != http.StatusBadRequest {
		t.Errorf("bad path: %v, want 400", err)
	}
}
