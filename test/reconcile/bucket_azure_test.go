package reconcile

import (
	"crypto/md5"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sourceraft/sourceraft/reconcilers"
)

// storageScope is the scope of Entra access tokens for Azure Storage.
const storageScope = "https://storage.azure.com/.default"

// blobService stands in for an Azure Storage account's Blob service
// (List Blobs and Get Blob): its containers are read only with an Entra
// access token for Azure Storage (azureserver's, verified) of an app
// granted read on the container (Storage Blob Data Reader).
type blobService struct {
	mu sync.Mutex
	// containers hold blobs by name; readers are the apps,
	// tenant/client, that may read each container.
	containers map[string]map[string]blob
	readers    map[string][]string
	// served counts the requests each app made that were let in.
	served map[string]int
}

type blob struct {
	content []byte
	etag    string // as List Blobs has it, without quotes
}

// startBlobService serves an account's Blob service at
// <account>.blob.core.windows.net behind cloud's proxy and returns its
// endpoint and the address it listens on.
func startBlobService(t *testing.T, account string) (*blobService, string, string) {
	t.Helper()
	b := &blobService{containers: map[string]map[string]blob{}, readers: map[string][]string{}, served: map[string]int{}}
	host := account + ".blob.core.windows.net"
	srv, err := cloud.Serve(b, host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return b, "https://" + host, srv.Listener.Addr().String()
}

// fill creates container with blobs (name → content), readable by the
// apps (tenant/client), and returns the revision Flux settles on for
// them: that of the ETags Get Blob answers.
func (b *blobService) fill(container string, blobs map[string]string, apps ...string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := map[string]blob{}
	etags := map[string]string{}
	for name, content := range blobs {
		sum := md5.Sum([]byte(container + "/" + name + "\x00" + content))
		etag := "0x8D" + strings.ToUpper(hex.EncodeToString(sum[:6]))
		c[name] = blob{content: []byte(content), etag: etag}
		etags[name] = `"` + etag + `"`
	}
	b.containers[container] = c
	b.readers[container] = apps
	return etagsRevision(etags)
}

// servedTo is how many requests of the app were let in.
func (b *blobService) servedTo(app string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.served[app]
}

// blobError answers as the Blob service does: the code in the
// x-ms-error-code header and an XML body.
func blobError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("x-ms-error-code", code)
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="utf-8"?><Error><Code>%s</Code><Message>%s</Message></Error>`, code, msg)
}

func (b *blobService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		blobError(w, http.StatusUnauthorized, "NoAuthenticationInformation", "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.")
		return
	}
	claims, err := entra.Verify(token, storageScope)
	if err != nil {
		blobError(w, http.StatusUnauthorized, "InvalidAuthenticationInfo", "Server failed to authenticate the request: "+err.Error())
		return
	}
	app := claims.TenantID + "/" + claims.AppID
	container, name, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	b.mu.Lock()
	blobs, exists := b.containers[container]
	allowed := slices.Contains(b.readers[container], app)
	if allowed {
		b.served[app]++
	}
	b.mu.Unlock()
	switch {
	case r.Method != http.MethodGet:
		blobError(w, http.StatusMethodNotAllowed, "UnsupportedHttpVerb", "The resource doesn't support specified Http Verb.")
	case !exists:
		blobError(w, http.StatusNotFound, "ContainerNotFound", "The specified container does not exist.")
	case !allowed:
		blobError(w, http.StatusForbidden, "AuthorizationPermissionMismatch", "This request is not authorized to perform this operation using this permission.")
	case name == "" && r.URL.Query().Get("restype") == "container" && r.URL.Query().Get("comp") == "list":
		b.list(w, r, container, blobs)
	case name != "":
		bl, ok := blobs[name]
		if !ok {
			blobError(w, http.StatusNotFound, "BlobNotFound", "The specified blob does not exist.")
			return
		}
		w.Header().Set("ETag", `"`+bl.etag+`"`)
		w.Header().Set("Content-Length", strconv.Itoa(len(bl.content)))
		w.Header().Set("x-ms-blob-type", "BlockBlob")
		_, _ = w.Write(bl.content)
	default:
		blobError(w, http.StatusBadRequest, "InvalidQueryParameterValue", "Value for one of the query parameters specified in the request URI is invalid.")
	}
}

// list answers List Blobs (flat) of the blobs under prefix, in name
// order, maxresults a page, the marker the next blob's name.
func (b *blobService) list(w http.ResponseWriter, r *http.Request, container string, blobs map[string]blob) {
	q := r.URL.Query()
	max := 5000
	if m, err := strconv.Atoi(q.Get("maxresults")); err == nil && m > 0 && m < max {
		max = m
	}
	var names []string
	for n := range blobs {
		if strings.HasPrefix(n, q.Get("prefix")) && n >= q.Get("marker") {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	type props struct {
		LastModified  string `xml:"Last-Modified"`
		Etag          string `xml:"Etag"`
		ContentLength int    `xml:"Content-Length"`
		BlobType      string `xml:"BlobType"`
	}
	type item struct {
		Name       string `xml:"Name"`
		Properties props  `xml:"Properties"`
	}
	res := struct {
		XMLName       xml.Name `xml:"EnumerationResults"`
		ContainerName string   `xml:"ContainerName,attr"`
		Prefix        string   `xml:"Prefix"`
		MaxResults    int      `xml:"MaxResults"`
		Blobs         []item   `xml:"Blobs>Blob"`
		NextMarker    string   `xml:"NextMarker"`
	}{ContainerName: container, Prefix: q.Get("prefix"), MaxResults: max}
	if len(names) > max {
		res.NextMarker = names[max]
		names = names[:max]
	}
	for _, n := range names {
		res.Blobs = append(res.Blobs, item{Name: n, Properties: props{
			LastModified: time.Now().UTC().Format(http.TimeFormat), Etag: blobs[n].etag,
			ContentLength: len(blobs[n].content), BlobType: "BlockBlob",
		}})
	}
	w.Header().Set("Content-Type", "application/xml")
	_, _ = w.Write([]byte(xml.Header))
	_ = xml.NewEncoder(w).Encode(res)
}

// newAzureBucket creates an azure Bucket of container at endpoint,
// authenticating as ServiceAccount sa, and deletes it when t ends: a
// refused one would retry for the rest of the run.
func newAzureBucket(t *testing.T, ns, name, endpoint, container, sa string, mutate func(*sourcev1.Bucket)) *sourcev1.Bucket {
	t.Helper()
	t.Cleanup(func() { deleteAndWait(t, newObject[*sourcev1.Bucket](ns, name)) })
	return createObject(t, &sourcev1.Bucket{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: sourcev1.BucketSpec{
			Provider:           sourcev1.BucketProviderAzure,
			BucketName:         container,
			Endpoint:           endpoint,
			ServiceAccountName: sa,
			Interval:           metav1.Duration{Duration: time.Hour},
			Timeout:            &metav1.Duration{Duration: 20 * time.Second},
		},
	}, mutate)
}

// TestBucketAzure fetches an Azure Blob Storage container as a
// ServiceAccount of the object's namespace (workload identity: its token
// exchanged at Entra ID for an access token for Azure Storage).
func TestBucketAzure(t *testing.T) {
	ns := namespaceFor(t, "azblob")
	tenant, reader := azureIdentity(ns, "reader")
	_, outsider := azureIdentity(ns, "outsider")
	entra.Federate(tenant, reader, ns, "reader")
	entra.Federate(tenant, reader, ns, "proxied")
	entra.Federate(tenant, outsider, ns, "outsider")
	azureServiceAccount(t, ns, "reader", tenant, reader)
	azureServiceAccount(t, ns, "proxied", tenant, reader)
	azureServiceAccount(t, ns, "outsider", tenant, outsider)
	azureServiceAccount(t, ns, "untrusted", tenant, reader)
	account := "acct" + strings.ReplaceAll(ns, "-", "")
	svc, endpoint, addr := startBlobService(t, account)
	objects := map[string]string{"deploy/app.yaml": "kind: ConfigMap\n", "README.md": "# azure\n"}
	rev := svc.fill("flux", objects, tenant+"/"+reader)

	t.Run("service account", func(t *testing.T) {
		newAzureBucket(t, ns, "sa", endpoint, "flux", "reader", nil)
		o := bucketReadyAt(t, ns, "sa", rev)
		files := bucketCheckArtifact(t, o)
		if len(files) != 2 || files["deploy/app.yaml"] != objects["deploy/app.yaml"] || files["README.md"] != objects["README.md"] {
			t.Errorf("artifact files %v, want the container's two blobs", fileNames(files))
		}
		if conditions.Has(o, sourcev1.FetchFailedCondition) || conditions.Has(o, meta.StalledCondition) {
			t.Errorf("Ready Bucket has failure conditions: %v", o.Status.Conditions)
		}
		// Exists, list, .sourceignore and the two blobs.
		if n := svc.servedTo(tenant + "/" + reader); n < 5 {
			t.Errorf("the reader app made %d requests, want at least 5", n)
		}
		// An unchanged container keeps its revision and its artifact.
		if o := bucketRequestReconcile(t, ns, "sa"); o.Status.Artifact.Revision != rev {
			t.Errorf("revision after a reconcile %q, want %q", o.Status.Artifact.Revision, rev)
		}
	})

	t.Run("proxy", func(t *testing.T) {
		// spec.proxySecretRef carries the Entra exchange (of its own
		// ServiceAccount, so no cached token stands in) and the Blob
		// requests, instead of the process's proxy.
		blobHost := strings.TrimPrefix(endpoint, "https://") + ":443"
		p := startProxy(t, proxyUser, proxyPass)
		p.Route(entraHost+":443", entraAddr)
		p.Route(blobHost, addr)
		bucketSecret(t, ns, "azure-proxy", map[string]string{"address": p.URL(), "username": proxyUser, "password": proxyPass})
		viaCloud := cloud.Proxy.CarriedTo(entraHost+":443") + cloud.Proxy.CarriedTo(blobHost)
		newAzureBucket(t, ns, "proxied", endpoint, "flux", "proxied", func(b *sourcev1.Bucket) { b.Spec.ProxySecretRef = proxyRef("azure-proxy") })
		bucketCheckArtifact(t, bucketReadyAt(t, ns, "proxied", rev))
		if p.CarriedTo(entraHost+":443") == 0 || p.CarriedTo(blobHost) == 0 {
			t.Errorf("the Bucket's proxy carried %s, want Entra ID and the Blob service", p.Hosts())
		}
		if n := cloud.Proxy.CarriedTo(entraHost+":443") + cloud.Proxy.CarriedTo(blobHost) - viaCloud; n != 0 {
			t.Errorf("the process's proxy carried %d more requests: they went around the Bucket's proxy", n)
		}
	})

	t.Run("refusals", func(t *testing.T) {
		tests := []struct {
			name, container, sa string
			mutate              func(*sourcev1.Bucket)
			reason              string
			message             []string
			stalled             bool
		}{
			{"outsider", "flux", "outsider", nil, sourcev1.BucketOperationFailedReason,
				[]string{"failed to confirm existence of 'flux' bucket", "AuthorizationPermissionMismatch"}, false},
			{"untrusted", "flux", "untrusted", nil, sourcev1.BucketOperationFailedReason,
				[]string{"failed to confirm existence of 'flux' bucket", "failed to create provider access token for service account '" + ns + "/untrusted'", "AADSTS"}, false},
			{"missing", "no-such-container", "reader", nil, sourcev1.BucketOperationFailedReason,
				[]string{"bucket 'no-such-container' not found"}, false},
			{"secret", "flux", "", func(b *sourcev1.Bucket) { b.Spec.SecretRef = &meta.LocalObjectReference{Name: "azure-keys"} },
				reconcilers.UnsupportedFieldReason, []string{"not supported by sourceraft yet: spec.secretRef for spec.provider 'azure'"}, true},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				newAzureBucket(t, ns, tt.name, endpoint, tt.container, tt.sa, tt.mutate)
				checkBucketRefused(t, ns, tt.name, tt.reason, tt.stalled, tt.message)
			})
		}
	})
}
