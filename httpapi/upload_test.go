package httpapi

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sourceraft/sourceraft/clusterapi"
)

// cutUpload sends a PUT whose body stops early, half-closes the
// connection so the server sees the body end, and returns the answer.
func cutUpload(t *testing.T, addr, path string, chunked bool, data []byte, sent int) (int, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	var req bytes.Buffer
	fmt.Fprintf(&req, "PUT %s HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer %s\r\n", clusterapi.ArtifactPath(path), testToken)
	if chunked {
		// One complete chunk and no terminating zero-length chunk.
		fmt.Fprintf(&req, "Transfer-Encoding: chunked\r\n\r\n%x\r\n", sent)
		req.Write(data[:sent])
		req.WriteString("\r\n")
	} else {
		fmt.Fprintf(&req, "Content-Length: %d\r\n\r\n", len(data))
		req.Write(data[:sent])
	}
	if _, err := conn.Write(req.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, err.Error() // connection closed: as good as a 4xx for the client
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAPIPutCutShortCommitsNothing(t *testing.T) {
	f, l := twoNodes(t, nil)
	prev := []byte("previous artifact")
	l.b.put(artPath, prev)
	data := randomBytes(300<<10, 30)
	for _, via := range []*testNode{l, f} {
		for _, chunked := range []bool{false, true} {
			name := fmt.Sprintf("via %s, chunked %v", via.id, chunked)
			code, body := cutUpload(t, via.api, artPath, chunked, data, 100<<10)
			if code != http.StatusBadRequest || !strings.Contains(body, "incomplete") {
				t.Errorf("%s: answered %d %s, want 400 naming the incomplete content", name, code, body)
			}
			resp, got := do(t, http.MethodGet, "http://"+l.artifact+"/"+artPath, nil, nil)
			if resp.StatusCode != http.StatusOK || !bytes.Equal(got, prev) {
				t.Fatalf("%s: leader serves %d, %d bytes; want the previous %d", name, resp.StatusCode, len(got), len(prev))
			}
		}
	}
	if f.b.has(artPath) {
		t.Error("the follower stored an artifact itself")
	}
	// A complete body over the same raw path commits: the cut is what failed.
	resp, body := do(t, http.MethodPut, "http://"+f.api+clusterapi.ArtifactsPrefix+artPath, bytes.NewReader(data), bearer)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("complete PUT: %d %s", resp.StatusCode, body)
	}
}

func TestAPIWritesValidateIdentity(t *testing.T) {
	n := startNode(t, "a", nil)
	n.b.put("foo/default/app/a.tar.gz", []byte("stored before validation"))
	for _, p := range []string{
		"foo/default/app/a.tar.gz",
		"GitRepository/default/app/a.tar.gz",
		"a:b/default/app/a.tar.gz",
		"bucket/Default/app/a.tar.gz",
		"bucket/a.b/app/a.tar.gz",
		"bucket/-ns/app/a.tar.gz",
		"bucket/default/App/a.tar.gz",
		"bucket/default/app_1/a.tar.gz",
		"bucket/default/" + strings.Repeat("a", 254) + "/a.tar.gz",
		"bucket/" + strings.Repeat("n", 64) + "/app/a.tar.gz",
	} {
		for _, m := range []string{http.MethodPut, http.MethodDelete} {
			resp, body := do(t, m, "http://"+n.api+clusterapi.ArtifactsPrefix+p, strings.NewReader("x"), bearer)
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("%s %s: %d %s, want 400", m, p, resp.StatusCode, body)
			}
		}
	}
	if n.b.stores.Load() != 0 {
		t.Errorf("an invalid identity reached Store")
	}
	// What was stored under the old rules is still served.
	resp, body := do(t, http.MethodGet, "http://"+n.artifact+"/foo/default/app/a.tar.gz", nil, nil)
	if resp.StatusCode != http.StatusOK || string(body) != "stored before validation" {
		t.Errorf("GET of an artifact stored before validation: %d %q", resp.StatusCode, body)
	}
	for _, p := range []string{"helmchart/flux-system/podinfo.v6/podinfo-6.5.0+build.1.tgz", "bucket/a/" + strings.Repeat("b", 253) + "/x.tar.gz"} {
		resp, body := do(t, http.MethodPut, "http://"+n.api+clusterapi.ArtifactsPrefix+p, strings.NewReader("x"), bearer)
		if resp.StatusCode != http.StatusCreated {
			t.Errorf("PUT %s: %d %s, want 201", p, resp.StatusCode, body)
		}
	}
}
