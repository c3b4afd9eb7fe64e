package reconcile

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"github.com/minio/minio-go/v7"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sourceraft/sourceraft/internal/filetest"
	"github.com/sourceraft/sourceraft/internal/minioserver"
	"github.com/sourceraft/sourceraft/internal/pki"
	"github.com/sourceraft/sourceraft/reconcilers"
)

// bucketSecret creates a Secret with S3 keys in Flux's accesskey and
// secretkey fields.
func bucketSecret(t *testing.T, ns, name string, data map[string]string) {
	t.Helper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, StringData: data}
	if err := env.Client.Create(context.Background(), s); err != nil {
		t.Fatal(err)
	}
}

// newBucketSource creates a Bucket on the test MinIO with the root keys
// in a Secret and a long interval, so that only spec changes and
// requestedAt annotations trigger reconciles.
func newBucketSource(t *testing.T, ns, name, bucketName string, mutate func(*sourcev1.Bucket)) *sourcev1.Bucket {
	t.Helper()
	m := minioserver.Shared(t)
	bucketSecret(t, ns, name+"-keys", map[string]string{"accesskey": minioserver.User, "secretkey": minioserver.Password})
	obj := &sourcev1.Bucket{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: sourcev1.BucketSpec{
			Provider:   sourcev1.BucketProviderGeneric,
			BucketName: bucketName,
			Endpoint:   m.Endpoint,
			Insecure:   true,
			SecretRef:  &meta.LocalObjectReference{Name: name + "-keys"},
			Interval:   metav1.Duration{Duration: time.Hour},
			Timeout:    &metav1.Duration{Duration: 20 * time.Second},
		},
	}
	return createObject(t, obj, mutate)
}

// The Bucket forms of the generic helpers (main_test.go).
var (
	bucketGet        = getObject[*sourcev1.Bucket]
	bucketWaitFor    = waitForObject[*sourcev1.Bucket]
	bucketReadyAt    = waitReady[*sourcev1.Bucket]
	bucketFailedWith = waitFailed[*sourcev1.Bucket]
	bucketStored     = storedOf[*sourcev1.Bucket]
)

// bucketRequestReconcile sets a new reconcile.fluxcd.io/requestedAt
// annotation and waits until the reconcile it asks for has ended (the
// status acknowledges a request only when a reconcile finishes).
func bucketRequestReconcile(t *testing.T, ns, name string) *sourcev1.Bucket {
	t.Helper()
	value := requestReconcileOf[*sourcev1.Bucket](t, ns, name)
	return bucketWaitFor(t, ns, name, 60*time.Second, "requestedAt "+value+" handled", func(o *sourcev1.Bucket) bool {
		return o.Status.LastHandledReconcileAt == value
	})
}

// bucketRevision is the revision Flux gives the objects of bucket under
// prefix whose keys keep accepts (see etagsRevision). It is computed here
// from the server's listing, independently of the reconciler.
func bucketRevision(t *testing.T, bucket, prefix string, keep func(key string) bool) string {
	t.Helper()
	m := minioserver.Shared(t)
	etags := map[string]string{}
	for o := range m.Client.ListObjects(context.Background(), bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		if o.Key == ".sourceignore" || (keep != nil && !keep(o.Key)) {
			continue
		}
		etags[o.Key] = o.ETag
	}
	return etagsRevision(etags)
}

// etagsRevision is Flux's Bucket revision of objects (key → ETag):
// sha256 over "<key> <etag>\n" in key order.
func etagsRevision(etags map[string]string) string {
	keys := make([]string, 0, len(etags))
	for k := range etags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%s %s\n", k, etags[k])
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// bucketCheckArtifact checks the status artifact against Flux's layout,
// fetches it as kustomize-controller does (fluxcd/pkg/http/fetch, digest
// verified) and returns its files.
func bucketCheckArtifact(t *testing.T, o *sourcev1.Bucket) map[string]string {
	t.Helper()
	a := o.Status.Artifact
	hexRev := strings.TrimPrefix(a.Revision, "sha256:")
	wantPath := "bucket/" + o.Namespace + "/" + o.Name + "/" + hexRev + ".tar.gz"
	if len(hexRev) != 64 || a.Path != wantPath {
		t.Errorf("artifact revision %q path %q, want sha256:<hex> and %q", a.Revision, a.Path, wantPath)
	}
	if a.URL != "http://"+advAddr+"/"+wantPath || o.Status.URL != aliasURL(a) {
		t.Errorf("artifact URL %q, status URL %q, want http://%s/%s and its latest.tar.gz", a.URL, o.Status.URL, advAddr, wantPath)
	}
	if !conditions.IsTrue(o, sourcev1.ArtifactInStorageCondition) {
		t.Errorf("ArtifactInStorage is not True: %v", o.Status.Conditions)
	}
	dir := fetchFromEveryReplica(t, a)
	files := filetest.ReadTree(t, dir)
	// The same bytes through the plain download, checked against size too.
	if got := untar(t, download(t, a)); strings.Join(fileNames(got), ",") != strings.Join(fileNames(files), ",") {
		t.Errorf("download holds %v, fetcher extracted %v", fileNames(got), fileNames(files))
	}
	return files
}

func TestBucketGeneric(t *testing.T) {
	m := minioserver.Shared(t)
	ns := newNamespace(t)
	bucket := m.NewBucket(t, map[string]string{
		"manifests/app.yaml": "kind: ConfigMap\n",
		"manifests/ns.yaml":  "kind: Namespace\n",
		"README.md":          "# readme\n",
		"dir-marker/":        "",
	})
	newBucketSource(t, ns, "generic", bucket, nil)
	rev := bucketRevision(t, bucket, "", func(k string) bool { return k != "dir-marker/" })
	o := bucketReadyAt(t, ns, "generic", rev)
	files := bucketCheckArtifact(t, o)
	if got := strings.Join(fileNames(files), ","); got != "README.md,manifests/app.yaml,manifests/ns.yaml" {
		t.Fatalf("artifact files %s", got)
	}
	if files["manifests/app.yaml"] != "kind: ConfigMap\n" {
		t.Errorf("app.yaml = %q", files["manifests/app.yaml"])
	}
	if len(o.Finalizers) != 1 || o.Finalizers[0] != sourcev1.SourceFinalizer {
		t.Errorf("finalizers %v", o.Finalizers)
	}
	if evs := eventSink.find(ns, "generic", "NewArtifact"); len(evs) == 0 || !strings.Contains(evs[0].Message, "3 fetched files from '"+bucket+"' bucket") {
		t.Errorf("NewArtifact events %+v", evs)
	}

	// Unchanged bucket: same revision, same artifact, nothing re-uploaded.
	again := bucketRequestReconcile(t, ns, "generic")
	if a, b := o.Status.Artifact, again.Status.Artifact; a.Revision != b.Revision || a.Digest != b.Digest || !a.LastUpdateTime.Equal(&b.LastUpdateTime) {
		t.Fatalf("unchanged bucket moved from %+v to %+v", a, b)
	}
	if arts := bucketStored(t, ns, "generic"); len(arts) != 1 {
		t.Fatalf("store holds %d artifacts after an unchanged reconcile, want 1", len(arts))
	}

	// A new object: a new revision and artifact; the old one is kept by
	// the retention (2 records).
	m.Put(t, bucket, map[string]string{"manifests/extra.yaml": "kind: Secret\n"})
	newRev := bucketRevision(t, bucket, "", func(k string) bool { return k != "dir-marker/" })
	if newRev == rev {
		t.Fatal("revision did not change with a new object")
	}
	bucketRequestReconcile(t, ns, "generic")
	o = bucketReadyAt(t, ns, "generic", newRev)
	if files := bucketCheckArtifact(t, o); files["manifests/extra.yaml"] != "kind: Secret\n" {
		t.Errorf("new artifact files %v", fileNames(files))
	}
	if arts := storedAfterGC[*sourcev1.Bucket](t, ns, "generic", 2); len(arts) != 2 {
		t.Errorf("store holds %d artifacts, want 2", len(arts))
	}

	// A changed object changes the revision too (its ETag changes).
	m.Put(t, bucket, map[string]string{"manifests/extra.yaml": "kind: Secret\ndata: {}\n"})
	bucketRequestReconcile(t, ns, "generic")
	o = bucketReadyAt(t, ns, "generic", bucketRevision(t, bucket, "", func(k string) bool { return k != "dir-marker/" }))
	if files := bucketCheckArtifact(t, o); files["manifests/extra.yaml"] != "kind: Secret\ndata: {}\n" {
		t.Errorf("changed object not in the artifact: %q", files["manifests/extra.yaml"])
	}

	// Deletion removes every artifact, then the finalizer.
	deleteAndWait(t, o)
	if arts := bucketStored(t, ns, "generic"); len(arts) != 0 {
		t.Fatalf("store still holds %d artifacts of the deleted Bucket", len(arts))
	}
}

func TestBucketContentSelection(t *testing.T) {
	m := minioserver.Shared(t)
	ns := newNamespace(t)
	bucket := m.NewBucket(t, map[string]string{
		".sourceignore":         "*.txt\nsecret/\n",
		"prod/app.yaml":         "prod",
		"prod/notes.txt":        "notes",
		"prod/keep.txt":         "keep",
		"prod/secret/token":     "t",
		"staging/app.yaml":      "staging",
		"staging/docs/guide.md": "guide",
	})
	ignoreMd := "*.md\n"
	unignoreKeep := "!keep.txt\n"
	tests := []struct {
		name   string
		mutate func(*sourcev1.Bucket)
		keep   func(string) bool
		prefix string
		files  string
	}{
		{"sourceignore", nil,
			func(k string) bool { return !strings.HasSuffix(k, ".txt") && !strings.Contains(k, "secret/") }, "",
			"prod/app.yaml,staging/app.yaml,staging/docs/guide.md"},
		{"prefix", func(b *sourcev1.Bucket) { b.Spec.Prefix = "staging/" },
			func(string) bool { return true }, "staging/",
			"staging/app.yaml,staging/docs/guide.md"},
		{"spec.ignore", func(b *sourcev1.Bucket) { b.Spec.Ignore = &ignoreMd },
			func(k string) bool {
				return !strings.HasSuffix(k, ".txt") && !strings.Contains(k, "secret/") && !strings.HasSuffix(k, ".md")
			}, "",
			"prod/app.yaml,staging/app.yaml"},
		{"spec.ignore overrides sourceignore", func(b *sourcev1.Bucket) { b.Spec.Ignore = &unignoreKeep },
			func(k string) bool {
				return k == "prod/keep.txt" || (!strings.HasSuffix(k, ".txt") && !strings.Contains(k, "secret/"))
			}, "",
			"prod/app.yaml,prod/keep.txt,staging/app.yaml,staging/docs/guide.md"},
		{"aws provider with static keys", func(b *sourcev1.Bucket) {
			b.Spec.Provider, b.Spec.Region, b.Spec.Prefix = sourcev1.BucketProviderAmazon, "us-east-1", "prod/"
		}, func(k string) bool { return !strings.HasSuffix(k, ".txt") && !strings.Contains(k, "secret/") }, "prod/",
			"prod/app.yaml"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := fmt.Sprintf("select-%d", i)
			newBucketSource(t, ns, name, bucket, tt.mutate)
			o := bucketReadyAt(t, ns, name, bucketRevision(t, bucket, tt.prefix, tt.keep))
			files := bucketCheckArtifact(t, o)
			if got := strings.Join(fileNames(files), ","); got != tt.files {
				t.Errorf("artifact files %s, want %s", got, tt.files)
			}
			if !equalIgnore(o.Status.ObservedIgnore, o.Spec.Ignore) {
				t.Errorf("observedIgnore %v, spec.ignore %v", o.Status.ObservedIgnore, o.Spec.Ignore)
			}
		})
	}
}

func equalIgnore(a, b *string) bool {
	return (a == nil && b == nil) || (a != nil && b != nil && *a == *b)
}

func TestBucketFetchFailures(t *testing.T) {
	m := minioserver.Shared(t)
	ns := newNamespace(t)
	bucket := m.NewBucket(t, map[string]string{"a.yaml": "a"})
	bucketSecret(t, ns, "wrong-keys", map[string]string{"accesskey": minioserver.User, "secretkey": "not-the-secret-key"})
	bucketSecret(t, ns, "unknown-user", map[string]string{"accesskey": "nobody", "secretkey": "not-the-secret-key"})
	bucketSecret(t, ns, "incomplete-keys", map[string]string{"accesskey": minioserver.User})
	tests := []struct {
		name    string
		mutate  func(*sourcev1.Bucket)
		cond    string
		reason  string
		message string
		stalled bool
	}{
		{"wrong secret key", func(b *sourcev1.Bucket) { b.Spec.SecretRef.Name = "wrong-keys" },
			sourcev1.FetchFailedCondition, sourcev1.BucketOperationFailedReason, "signature we calculated does not match", false},
		{"unknown access key", func(b *sourcev1.Bucket) { b.Spec.SecretRef.Name = "unknown-user" },
			sourcev1.FetchFailedCondition, sourcev1.BucketOperationFailedReason, "Access Key Id you provided does not exist", false},
		{"no credentials", func(b *sourcev1.Bucket) { b.Spec.SecretRef = nil },
			sourcev1.FetchFailedCondition, sourcev1.BucketOperationFailedReason, "failed to confirm existence of '" + bucket + "' bucket", false},
		{"missing secret", func(b *sourcev1.Bucket) { b.Spec.SecretRef.Name = "no-such-secret" },
			sourcev1.FetchFailedCondition, sourcev1.AuthenticationFailedReason, "failed to get secret '" + ns + "/no-such-secret'", false},
		{"secret without secretkey", func(b *sourcev1.Bucket) { b.Spec.SecretRef.Name = "incomplete-keys" },
			sourcev1.FetchFailedCondition, sourcev1.AuthenticationFailedReason, "required fields 'accesskey' and 'secretkey'", false},
		{"missing bucket", func(b *sourcev1.Bucket) { b.Spec.BucketName = "no-such-bucket" },
			sourcev1.FetchFailedCondition, sourcev1.BucketOperationFailedReason, "bucket 'no-such-bucket' not found", false},
		{"endpoint with scheme", func(b *sourcev1.Bucket) { b.Spec.Endpoint = "http://" + m.Endpoint },
			sourcev1.FetchFailedCondition, sourcev1.URLInvalidReason, "without a scheme", true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := fmt.Sprintf("fail-%d", i)
			newBucketSource(t, ns, name, bucket, tt.mutate)
			o := bucketFailedWith(t, ns, name, tt.cond, tt.reason)
			if msg := conditions.GetMessage(o, tt.cond); !strings.Contains(msg, tt.message) {
				t.Errorf("%s message %q, want it to contain %q", tt.cond, msg, tt.message)
			}
			if msg := conditions.GetMessage(o, meta.ReadyCondition); !strings.Contains(msg, tt.message) {
				t.Errorf("Ready message %q, want it to contain %q", msg, tt.message)
			}
			o = waitFailedAsFlux[*sourcev1.Bucket](t, ns, name, tt.cond, tt.reason, tt.stalled)
			if o.Status.Artifact != nil {
				t.Errorf("failed Bucket has an artifact: %+v", o.Status.Artifact)
			}
		})
	}
}

func TestBucketHostileKeys(t *testing.T) {
	m := minioserver.Shared(t)
	ns := newNamespace(t)
	bucket := m.NewBucket(t, map[string]string{"ok.yaml": "ok"})
	// MinIO itself refuses keys with ".." segments; a server that accepts
	// them is covered by the reconcilers package's unit tests.
	for _, key := range []string{"../../x", "a/../../x", "..\\..\\x"} {
		if err := m.PutErr(bucket, key, "MUST-NOT-ESCAPE"); err == nil {
			t.Errorf("MinIO accepted the key %q", key)
		}
	}
	// A leading slash is dropped by MinIO and by the reconciler alike: the
	// object lands inside the artifact, not at /etc.
	m.Put(t, bucket, map[string]string{"/etc/sourceraft-bucket-test": "inside"})
	newBucketSource(t, ns, "hostile", bucket, nil)
	o := bucketReadyAt(t, ns, "hostile", bucketRevision(t, bucket, "", nil))
	files := bucketCheckArtifact(t, o)
	if got := strings.Join(fileNames(files), ","); got != "etc/sourceraft-bucket-test,ok.yaml" {
		t.Fatalf("artifact files %s", got)
	}
	if _, err := os.Stat("/etc/sourceraft-bucket-test"); err == nil {
		t.Fatal("an object was written to /etc")
	}
}

func TestBucketOversizedObjectKeepsPreviousArtifact(t *testing.T) {
	m := minioserver.Shared(t)
	ns := newNamespace(t)
	bucket := m.NewBucket(t, map[string]string{"small.yaml": "small"})
	newBucketSource(t, ns, "big", bucket, nil)
	before := bucketReadyAt(t, ns, "big", bucketRevision(t, bucket, "", nil))

	m.Put(t, bucket, map[string]string{"blob.bin": strings.Repeat("0123456789abcdef", archiveMaxSize/16+1)})
	bucketRequestReconcile(t, ns, "big")
	o := bucketFailedWith(t, ns, "big", sourcev1.FetchFailedCondition, reconcilers.ArchiveLimitReason)
	if msg := conditions.GetMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(msg, "object 'blob.bin'") || !strings.Contains(msg, "limit") {
		t.Errorf("FetchFailed message %q", msg)
	}
	// The previous artifact is still the status artifact, still served.
	if o.Status.Artifact == nil || o.Status.Artifact.Digest != before.Status.Artifact.Digest {
		t.Fatalf("status artifact changed to %+v", o.Status.Artifact)
	}
	if files := bucketCheckArtifact(t, o); strings.Join(fileNames(files), ",") != "small.yaml" {
		t.Errorf("previous artifact files %v", fileNames(files))
	}
	if arts := bucketStored(t, ns, "big"); len(arts) != 1 {
		t.Errorf("store holds %d artifacts, want only the previous one", len(arts))
	}

	// Too many objects (files plus directories) is refused the same way.
	many := map[string]string{}
	for i := range archiveMaxEntries {
		many[fmt.Sprintf("many/%04d.yaml", i)] = "x"
	}
	m.Remove(t, bucket, "blob.bin")
	m.Put(t, bucket, many)
	bucketRequestReconcile(t, ns, "big")
	o = bucketFailedWith(t, ns, "big", sourcev1.FetchFailedCondition, reconcilers.ArchiveLimitReason)
	if msg := conditions.GetMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(msg, "files and directories") {
		t.Errorf("FetchFailed message %q", msg)
	}

	// Within the limits again: recovers.
	for k := range many {
		m.Remove(t, bucket, k)
	}
	m.Put(t, bucket, map[string]string{"second.yaml": "second"})
	bucketRequestReconcile(t, ns, "big")
	o = bucketReadyAt(t, ns, "big", bucketRevision(t, bucket, "", nil))
	if conditions.Has(o, sourcev1.FetchFailedCondition) {
		t.Errorf("FetchFailed left after recovery: %v", o.Status.Conditions)
	}
	if files := bucketCheckArtifact(t, o); strings.Join(fileNames(files), ",") != "second.yaml,small.yaml" {
		t.Errorf("recovered artifact files %v", fileNames(files))
	}
}

func TestBucketSuspend(t *testing.T) {
	m := minioserver.Shared(t)
	ns := newNamespace(t)
	bucket := m.NewBucket(t, map[string]string{"a.yaml": "1"})
	newBucketSource(t, ns, "suspended", bucket, nil)
	first := bucketReadyAt(t, ns, "suspended", "")

	o := bucketGet(t, ns, "suspended")
	updateSpec(t, o, func(o *sourcev1.Bucket) { o.Spec.Suspend = true })
	m.Put(t, bucket, map[string]string{"b.yaml": "2"})
	if o := bucketRequestReconcile(t, ns, "suspended"); o.Status.Artifact.Revision != first.Status.Artifact.Revision {
		t.Fatalf("suspended Bucket moved to %s", o.Status.Artifact.Revision)
	}

	o = bucketGet(t, ns, "suspended")
	updateSpec(t, o, func(o *sourcev1.Bucket) { o.Spec.Suspend = false })
	bucketReadyAt(t, ns, "suspended", bucketRevision(t, bucket, "", nil))
}

// TestBucketCertSecretRef: spec.certSecretRef's CA is what the client
// trusts for an HTTPS endpoint whose CA the machine does not know, as in
// Flux (the system roots and ca.crt); without it, or with another CA, the
// TLS handshake fails and nothing is fetched.
func TestBucketCertSecretRef(t *testing.T) {
	ca, err := pki.NewCA("bucket endpoint CA")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.Issue("127.0.0.1", nil, []net.IP{net.ParseIP("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.PEM)
	m := minioserver.Start(t, minioserver.Options{CertsDir: minioCertsDir(t, pair, nil), RootCAs: roots})
	bucket := m.NewBucket(t, map[string]string{"a.yaml": "a"})
	otherCA, err := pki.NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	ns := newNamespace(t)
	bucketSecret(t, ns, "endpoint-ca", map[string]string{"ca.crt": string(ca.PEM)})
	bucketSecret(t, ns, "other-ca", map[string]string{"ca.crt": string(otherCA.PEM)})
	https := func(ca string) func(*sourcev1.Bucket) {
		return func(b *sourcev1.Bucket) {
			b.Spec.Endpoint, b.Spec.Insecure = m.Endpoint, false
			if ca != "" {
				b.Spec.CertSecretRef = &meta.LocalObjectReference{Name: ca}
			}
		}
	}

	newBucketSource(t, ns, "tls", bucket, https("endpoint-ca"))
	if files := bucketCheckArtifact(t, bucketReadyAt(t, ns, "tls", "")); files["a.yaml"] != "a" {
		t.Errorf("artifact files %v, want a.yaml", fileNames(files))
	}

	for name, tt := range map[string]struct{ ca, reason, message string }{
		"no-ca":      {"", sourcev1.BucketOperationFailedReason, "x509: certificate signed by unknown authority"},
		"wrong-ca":   {"other-ca", sourcev1.BucketOperationFailedReason, "x509: certificate signed by unknown authority"},
		"missing-ca": {"no-such-secret", sourcev1.AuthenticationFailedReason, "failed to get TLS config: secret '" + ns + "/no-such-secret' not found"},
	} {
		t.Run(name, func(t *testing.T) {
			newBucketSource(t, ns, name, bucket, https(tt.ca))
			o := waitFailedAsFlux[*sourcev1.Bucket](t, ns, name, sourcev1.FetchFailedCondition, tt.reason, false)
			if msg := conditions.GetMessage(o, sourcev1.FetchFailedCondition); !strings.Contains(msg, tt.message) {
				t.Errorf("FetchFailed message %q, want it to contain %q", msg, tt.message)
			}
			if o.Status.Artifact != nil {
				t.Errorf("failed Bucket has an artifact: %+v", o.Status.Artifact)
			}
		})
	}
}

// checkBucketRefused waits for Bucket ns/name to fail to fetch with reason
// (stalled or retried), a FetchFailed message holding every one of
// message, and no artifact in its status or the store.
func checkBucketRefused(t *testing.T, ns, name, reason string, stalled bool, message []string) {
	t.Helper()
	o := waitFailedAsFlux[*sourcev1.Bucket](t, ns, name, sourcev1.FetchFailedCondition, reason, stalled)
	msg := conditions.GetMessage(o, sourcev1.FetchFailedCondition)
	for _, want := range message {
		if !strings.Contains(msg, want) {
			t.Errorf("FetchFailed message %q, want it to contain %q", msg, want)
		}
	}
	if o.Status.Artifact != nil || len(bucketStored(t, ns, name)) != 0 {
		t.Errorf("refused Bucket has an artifact: %+v", o.Status.Artifact)
	}
}
