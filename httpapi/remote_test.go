package httpapi

import (
	"bytes"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// Blobs in the object store: served through OpenRemote, never asked for
// a plain HEAD, redirected when it presigns, and from a peer (else 503)
// when the store cannot give them.
func TestArtifactRemoteBlob(t *testing.T) {
	n := startNode(t, "a", nil)
	data := randomBytes(200<<10, 11)
	small := randomBytes(900, 12)
	a := n.b.putRemote(artPath, data)
	n.b.putRemote("helmchart/ns/c/1.tgz", small)
	url := "http://" + n.artifact + "/" + artPath

	resp, _ := do(t, http.MethodHead, url, nil, nil)
	if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(data)) || n.b.remoteOpens.Load() != 0 {
		t.Fatalf("HEAD: %d, length %d, %d object store reads", resp.StatusCode, resp.ContentLength, n.b.remoteOpens.Load())
	}
	resp, body := do(t, http.MethodGet, url, nil, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) || resp.Header.Get("ETag") != `"`+a.Digest+`"` {
		t.Fatalf("GET: %d, %d bytes, etag %q", resp.StatusCode, len(body), resp.Header.Get("ETag"))
	}
	resp, body = do(t, http.MethodGet, url, nil, map[string]string{"Range": "bytes=10-19"})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, data[10:20]) {
		t.Fatalf("range: %d, %q", resp.StatusCode, body)
	}

	// A small blob is held in memory after its first read.
	smallURL := "http://" + n.artifact + "/helmchart/ns/c/1.tgz"
	for range 2 {
		if resp, body := do(t, http.MethodGet, smallURL, nil, nil); resp.StatusCode != http.StatusOK || !bytes.Equal(body, small) {
			t.Fatalf("small GET: %d, %d bytes", resp.StatusCode, len(body))
		}
	}
	if got := n.b.remoteOpens.Load(); got != 3 {
		t.Fatalf("%d object store reads; want 2 for the large blob, 1 for the small one", got)
	}

	n.b.setRemote(nil, "http://bucket.example/presigned")
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTemporaryRedirect || resp.Header.Get("Location") != "http://bucket.example/presigned/"+a.Blob() {
		t.Fatalf("presign: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}

	n.b.setRemote(errors.New("bucket unreachable: connection refused"), "")
	resp, body = do(t, http.MethodGet, url, nil, nil)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "connection refused") {
		t.Fatalf("store away: %d %q", resp.StatusCode, body)
	}
}

// A replica whose object store fails serves a peer's copy.
func TestArtifactRemoteBlobFromPeer(t *testing.T) {
	f, l := twoNodes(t, nil)
	data := randomBytes(100<<10, 13)
	for _, n := range []*testNode{f, l} {
		n.b.putRemote(artPath, data)
	}
	f.b.setRemote(errors.New("access denied"), "")
	resp, body := do(t, http.MethodGet, "http://"+f.artifact+"/"+artPath, nil, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) || resp.Header.Get("Content-Length") != strconv.Itoa(len(data)) {
		t.Fatalf("GET with the store away here: %d, %d bytes", resp.StatusCode, len(body))
	}
	if l.b.remoteOpens.Load() == 0 {
		t.Fatal("the peer was not asked")
	}
}
