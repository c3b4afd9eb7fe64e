package reconcile

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"github.com/fsouza/fake-gcs-server/fakestorage"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sourceraft/sourceraft/internal/gcpserver"
)

// gcsHost is Google Cloud Storage's API host, where the gcp provider's
// client goes whatever spec.endpoint says (as in Flux).
const gcsHost = "storage.googleapis.com"

// gcsReader is the Google service account the Bucket tests' own
// ServiceAccounts impersonate and whose keys they hold.
const gcsReader = "bucket-reader@" + gcpProject + ".iam.gserviceaccount.com"

// gcsStandIn is Google Cloud Storage on loopback: fake-gcs-server's
// JSON and XML APIs behind the bearer token check GCS makes, where each
// bucket lets in the access tokens granted read on it.
type gcsStandIn struct {
	*fakestorage.Server
	// grants are the buckets each known access token may read.
	grants map[string][]string
	// addr is where it listens, for the routes of the tests' own proxies.
	addr string
	mu   sync.Mutex
	// seen counts the requests each token made that were let in.
	seen map[string]int
}

// requests is how many requests token made that were let in.
func (g *gcsStandIn) requests(token string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.seen[token]
}

// startGCS serves the stand-in at storage.googleapis.com behind cloud's
// proxy; grants are fixed before it starts.
func startGCS(t *testing.T, grants map[string][]string) *gcsStandIn {
	t.Helper()
	fake, err := fakestorage.NewServerWithOptions(fakestorage.Options{NoListener: true, PublicHost: gcsHost})
	if err != nil {
		t.Fatal(err)
	}
	g := &gcsStandIn{Server: fake, grants: grants, seen: map[string]int{}}
	srv, err := cloud.Serve(http.HandlerFunc(g.serve), gcsHost)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	g.addr = srv.Listener.Addr().String()
	return g
}

// serve refuses a request without a known token (401, as GCS answers an
// invalid or expired one) or whose token may not read the bucket (403).
func (g *gcsStandIn) serve(w http.ResponseWriter, r *http.Request) {
	bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	buckets, known := g.grants[bearer]
	if !ok || !known {
		gcsError(w, http.StatusUnauthorized, "Invalid Credentials")
		return
	}
	bucket, permission := gcsBucketOf(r.URL.EscapedPath())
	if !slices.Contains(buckets, bucket) {
		gcsError(w, http.StatusForbidden, fmt.Sprintf("Caller does not have %s access to the Google Cloud Storage bucket. Permission '%s' denied on resource (or it may not exist).", permission, permission))
		return
	}
	g.mu.Lock()
	g.seen[bearer]++
	g.mu.Unlock()
	g.HTTPHandler().ServeHTTP(w, r)
}

// gcsBucketOf is the bucket a request path names and the permission it
// needs: the JSON API's /storage/v1/b/<bucket>[/o[/<object>]] and the
// XML API's /<bucket>/<object>.
func gcsBucketOf(path string) (bucket, permission string) {
	if rest, ok := strings.CutPrefix(path, "/storage/v1/b/"); ok {
		bucket, rest, _ = strings.Cut(rest, "/")
		switch {
		case rest == "":
			return bucket, "storage.buckets.get"
		case rest == "o":
			return bucket, "storage.objects.list"
		}
		return bucket, "storage.objects.get"
	}
	bucket, _, _ = strings.Cut(strings.TrimPrefix(path, "/"), "/")
	return bucket, "storage.objects.get"
}

func gcsError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(code)
	fmt.Fprintf(w, `{"error":{"code":%d,"message":%q,"errors":[{"message":%q,"domain":"global","reason":"%s"}]}}`,
		code, msg, msg, map[bool]string{true: "authError", false: "forbidden"}[code == http.StatusUnauthorized])
}

// fill creates bucket with objects (key → content) and returns the
// revision Flux gives them, from the server's own ETags.
func (g *gcsStandIn) fill(t *testing.T, bucket string, objects map[string]string) string {
	t.Helper()
	g.CreateBucketWithOpts(fakestorage.CreateBucketOpts{Name: bucket})
	for k, v := range objects {
		g.CreateObject(fakestorage.Object{ObjectAttrs: fakestorage.ObjectAttrs{BucketName: bucket, Name: k}, Content: []byte(v)})
	}
	// A few objects: one page.
	listed, err := g.ListObjectsWithOptionsPaginated(bucket, fakestorage.ListOptions{})
	if err != nil || listed.NextPageToken != "" {
		t.Fatalf("list %s: %v, next page %q", bucket, err, listed.NextPageToken)
	}
	etags := map[string]string{}
	for _, o := range listed.Objects {
		if o.Etag == "" {
			t.Fatalf("object %s has no ETag", o.Name)
		}
		etags[o.Name] = o.Etag
	}
	if len(etags) != len(objects) {
		t.Fatalf("bucket %s lists %d objects, want %d", bucket, len(etags), len(objects))
	}
	return etagsRevision(etags)
}

// newGCPBucket creates a gcp Bucket of bucket, authenticating with
// ServiceAccount sa (the controller when empty).
func newGCPBucket(t *testing.T, ns, name, bucket, sa string, mutate func(*sourcev1.Bucket)) *sourcev1.Bucket {
	t.Helper()
	return createObject(t, &sourcev1.Bucket{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: sourcev1.BucketSpec{
			Provider:           sourcev1.BucketProviderGoogle,
			BucketName:         bucket,
			Endpoint:           gcsHost,
			ServiceAccountName: sa,
			Interval:           metav1.Duration{Duration: time.Hour},
			Timeout:            &metav1.Duration{Duration: 20 * time.Second},
		},
	}, mutate)
}

// TestBucketGCP fetches Google Cloud Storage buckets as the controller
// (the metadata server's token), as a ServiceAccount of the object's
// namespace (GKE workload identity federation to gcsReader) and with a
// key of gcsReader in spec.secretRef, and checks the refusals.
func TestBucketGCP(t *testing.T) {
	gcpControllerIdentity(t)
	readerToken := gcpserver.NewToken("ya29.reader")
	gcp.srv.AddServiceAccount(gcsReader, readerToken)
	suffix := fmt.Sprintf("%x", time.Now().UnixNano())
	controllerBucket, readerBucket, missing := "controller-"+suffix, "reader-"+suffix, "missing-"+suffix
	gcs := startGCS(t, map[string][]string{
		gcp.srv.ControllerToken: {controllerBucket, missing},
		readerToken:             {readerBucket},
	})
	objects := map[string]string{"deploy/app.yaml": "kind: ConfigMap\n", "README.md": "# gcp\n"}
	controllerRev := gcs.fill(t, controllerBucket, objects)
	readerRev := gcs.fill(t, readerBucket, objects)
	ns := namespaceFor(t, "gcp")

	ready := func(t *testing.T, name, rev, token string) {
		t.Helper()
		before := gcs.requests(token)
		o := bucketReadyAt(t, ns, name, rev)
		files := bucketCheckArtifact(t, o)
		if len(files) != 2 || files["deploy/app.yaml"] != objects["deploy/app.yaml"] || files["README.md"] != objects["README.md"] {
			t.Errorf("artifact files %v, want the bucket's two objects", fileNames(files))
		}
		if conditions.Has(o, sourcev1.FetchFailedCondition) || conditions.Has(o, meta.StalledCondition) {
			t.Errorf("Ready Bucket has failure conditions: %v", o.Status.Conditions)
		}
		// Listing, .sourceignore, and the attributes and content of each
		// object.
		if n := gcs.requests(token) - before; n < 2+2*len(objects) {
			t.Errorf("the expected token made %d requests, want at least %d", n, 2+2*len(objects))
		}
	}

	t.Run("controller identity", func(t *testing.T) {
		newGCPBucket(t, ns, "controller", controllerBucket, "", nil)
		ready(t, "controller", controllerRev, gcp.srv.ControllerToken)
	})

	t.Run("service account", func(t *testing.T) {
		gcpServiceAccount(t, ns, "reader", gcsReader)
		gcp.srv.Bind(gcsReader, ns, "reader")
		newGCPBucket(t, ns, "sa", readerBucket, "reader", nil)
		ready(t, "sa", readerRev, readerToken)
	})

	t.Run("service account key", func(t *testing.T) {
		key, err := gcp.srv.NewKey(gcsReader)
		if err != nil {
			t.Fatal(err)
		}
		bucketSecret(t, ns, "reader-key", map[string]string{"serviceaccount": string(key)})
		newGCPBucket(t, ns, "key", readerBucket, "", func(b *sourcev1.Bucket) { b.Spec.SecretRef = &meta.LocalObjectReference{Name: "reader-key"} })
		ready(t, "key", readerRev, readerToken)
	})

	t.Run("proxy", func(t *testing.T) {
		// spec.proxySecretRef carries the key's token exchange as well as
		// the storage requests, instead of the process's proxy.
		const tokenHost, storage = "oauth2.googleapis.com:443", gcsHost + ":443"
		p := startProxy(t, proxyUser, proxyPass)
		p.Route(tokenHost, gcp.addr)
		p.Route(storage, gcs.addr)
		bucketSecret(t, ns, "gcp-proxy", map[string]string{"address": p.URL(), "username": proxyUser, "password": proxyPass})
		key, err := gcp.srv.NewKey(gcsReader)
		if err != nil {
			t.Fatal(err)
		}
		bucketSecret(t, ns, "proxied-key", map[string]string{"serviceaccount": string(key)})
		viaCloud := cloud.Proxy.CarriedTo(tokenHost) + cloud.Proxy.CarriedTo(storage)
		newGCPBucket(t, ns, "proxied", readerBucket, "", func(b *sourcev1.Bucket) {
			b.Spec.SecretRef = &meta.LocalObjectReference{Name: "proxied-key"}
			b.Spec.ProxySecretRef = proxyRef("gcp-proxy")
		})
		ready(t, "proxied", readerRev, readerToken)
		if p.CarriedTo(tokenHost) == 0 || p.CarriedTo(storage) == 0 {
			t.Errorf("the Bucket's proxy carried %s, want the token endpoint and storage", p.Hosts())
		}
		if n := cloud.Proxy.CarriedTo(tokenHost) + cloud.Proxy.CarriedTo(storage) - viaCloud; n != 0 {
			t.Errorf("the process's proxy carried %d more requests: they went around the Bucket's proxy", n)
		}
	})

	t.Run("refusals", func(t *testing.T) {
		gcpServiceAccount(t, ns, "unbound", gcsReader)
		// A key of an account the token endpoint does not know.
		stranger := "stranger@" + gcpProject + ".iam.gserviceaccount.com"
		gcp.srv.AddServiceAccount(stranger, gcpserver.NewToken("ya29.stranger"))
		strangerKey, err := gcp.srv.NewKey(stranger)
		if err != nil {
			t.Fatal(err)
		}
		bucketSecret(t, ns, "stranger-key", map[string]string{"serviceaccount": strings.Replace(string(strangerKey), "stranger@", "nobody@", 1)})
		bucketSecret(t, ns, "no-key", map[string]string{"accesskey": "a", "secretkey": "b"})
		bucketSecret(t, ns, "bad-key", map[string]string{"serviceaccount": `{"type":"authorized_user"}`})
		withSecret := func(name string) func(*sourcev1.Bucket) {
			return func(b *sourcev1.Bucket) { b.Spec.SecretRef = &meta.LocalObjectReference{Name: name} }
		}
		tests := []struct {
			name, bucket, sa string
			mutate           func(*sourcev1.Bucket)
			reason           string
			message          []string
		}{
			{"controller token refused", readerBucket, "", nil, sourcev1.BucketOperationFailedReason,
				[]string{"failed to confirm existence of '" + readerBucket + "' bucket", "Permission 'storage.buckets.get' denied"}},
			{"missing bucket", missing, "", nil, sourcev1.BucketOperationFailedReason,
				[]string{"bucket '" + missing + "' not found"}},
			{"service account not bound", readerBucket, "unbound", nil, sourcev1.BucketOperationFailedReason,
				[]string{"failed to confirm existence of '" + readerBucket + "' bucket",
					"failed to create provider access token for service account '" + ns + "/unbound'", "iam.serviceAccounts.getAccessToken"}},
			{"missing service account", readerBucket, "nobody", nil, sourcev1.BucketOperationFailedReason,
				[]string{"failed to get service account '" + ns + "/nobody'", "not found"}},
			{"key of an unknown account", readerBucket, "", withSecret("stranger-key"), sourcev1.BucketOperationFailedReason,
				[]string{"failed to confirm existence of '" + readerBucket + "' bucket", "Invalid JWT Signature."}},
			{"secret without serviceaccount", readerBucket, "", withSecret("no-key"), sourcev1.AuthenticationFailedReason,
				[]string{"invalid 'no-key' secret data: required fields 'serviceaccount'"}},
			{"serviceaccount not a service account key", readerBucket, "", withSecret("bad-key"), sourcev1.AuthenticationFailedReason,
				[]string{"failed to create Google credentials from secret"}},
		}
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				name := fmt.Sprintf("refused-%d", i)
				newGCPBucket(t, ns, name, tt.bucket, tt.sa, tt.mutate)
				checkBucketRefused(t, ns, name, tt.reason, false, tt.message)
			})
		}
	})
}
