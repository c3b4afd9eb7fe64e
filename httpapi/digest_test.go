package httpapi

import (
	"bytes"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/sourceraft/sourceraft/storage"
)

// An artifact whose digest is not sha256 is verified on its first
// download against its sha256 blob address: intact, it is served whole
// with its own digest as the ETag (from memory, or streamed through the
// hash); corrupt, the download never completes and the blob is repaired
// from a peer by its blob address.
func TestArtifactOtherDigestAlgorithm(t *testing.T) {
	for _, algo := range []digest.Algorithm{storage.SHA1, digest.SHA512, digest.BLAKE3} {
		for _, size := range []int{1000, 10 * 64 << 10} {
			t.Run(fmt.Sprint(algo, size), func(t *testing.T) {
				data := randomBytes(size, 12)
				a, b := startNode(t, "a", nil), startNode(t, "b", nil)
				a.b.algo, b.b.algo = algo, algo
				formCluster(b, a, b)
				art := a.b.put(artPath, data)
				b.b.put(artPath, data)
				if art.Digest != algo.FromBytes(data).String() {
					t.Fatalf("committed digest %s", art.Digest)
				}
				url := "http://" + a.artifact + "/" + artPath
				resp, body := do(t, http.MethodGet, url, nil, nil)
				if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) || resp.Header.Get("ETag") != `"`+art.Digest+`"` {
					t.Fatalf("GET: %d, %d bytes, ETag %s", resp.StatusCode, len(body), resp.Header.Get("ETag"))
				}
				if st := a.b.f.Integrity(); st.Verified != 1 || st.Corrupt != 0 {
					t.Fatalf("after an intact first download: integrity %+v", st)
				}

				other := "gitrepository/flux-system/podinfo/other.tar.gz"
				bad := randomBytes(size, 13)
				a.b.put(other, bad)
				b.b.put(other, bad)
				a.b.corrupt(other, int64(size/2))
				otherURL := "http://" + a.artifact + "/" + other
				if size > 256<<10 {
					getExpectingFailure(t, otherURL, nil, bad)
				} else if resp, body := do(t, http.MethodGet, otherURL, nil, nil); resp.StatusCode != http.StatusOK || !bytes.Equal(body, bad) {
					t.Fatalf("corrupt small blob, peer's copy: %d, %d bytes", resp.StatusCode, len(body))
				}
				deadline := time.Now().Add(10 * time.Second)
				for a.b.f.Integrity().Repaired == 0 {
					if time.Now().After(deadline) {
						t.Fatalf("not repaired: %+v\n%s", a.b.f.Integrity(), a.logs.String())
					}
					time.Sleep(20 * time.Millisecond)
				}
				if resp, body := do(t, http.MethodGet, otherURL, nil, nil); resp.StatusCode != http.StatusOK || !bytes.Equal(body, bad) {
					t.Fatalf("GET after repair: %d, %d bytes", resp.StatusCode, len(body))
				}
			})
		}
	}
}
