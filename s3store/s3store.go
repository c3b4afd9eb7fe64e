// Package s3store keeps artifact blob bytes in an S3-compatible bucket
// (--storage-backend=s3): each blob is one object named by its sha256
// content address. It owns the bucket client (minio-go), the writes, the
// reads through a bounded disk cache, pre-signed URLs, listing, deletes
// and the sweep of abandoned multipart uploads. What the blobs are, and
// when one may go, is decided by the Raft store above it.
package s3store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/encrypt"

	"github.com/sourceraft/sourceraft/storage"
)

// Config says where the bucket is and how to reach it.
type Config struct {
	// Endpoint is host:port, as minio-go takes it; TLS unless Insecure.
	Endpoint string
	// Bucket must exist: New fails if it does not.
	Bucket string
	Region string
	// Prefix goes before every key: objects are Prefix+"sha256/"+hex.
	Prefix   string
	Insecure bool
	// CAFile is a PEM bundle trusted for the endpoint beside the system roots.
	CAFile string
	// PathStyle addresses the bucket in the path, not the host name.
	PathStyle bool
	// CredentialsFile is an AWS shared credentials file ([default]
	// aws_access_key_id, aws_secret_access_key), e.g. a mounted Secret;
	// empty reads AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
	CredentialsFile string
	// SSE is "" (the bucket's default), "s3" (SSE-S3) or "kms:<key-id>".
	SSE string
	// CacheDir holds the read cache, at most CacheSize bytes.
	CacheDir  string
	CacheSize int64
	// Transport replaces the HTTP transport (tests).
	Transport http.RoundTripper
	// PartSize is the multipart part size; zero means 16 MiB.
	PartSize uint64
}

// defaultPartSize keeps a Put's memory at a few parts whatever the blob.
const defaultPartSize = 16 << 20

// Store is a bucket of blobs.
type Store struct {
	cfg    Config
	client *minio.Client
	sse    encrypt.ServerSide
	cache  *cache
}

// ParseSSE reads the --s3-sse value.
func ParseSSE(s string) (encrypt.ServerSide, error) {
	switch {
	case s == "":
		return nil, nil
	case s == "s3":
		return encrypt.NewSSE(), nil
	case strings.HasPrefix(s, "kms:") && len(s) > len("kms:"):
		sse, err := encrypt.NewSSEKMS(strings.TrimPrefix(s, "kms:"), nil)
		if err != nil {
			return nil, fmt.Errorf("--s3-sse=%q: %w", s, err)
		}
		return sse, nil
	}
	return nil, fmt.Errorf("--s3-sse=%q: want s3 or kms:<key-id>", s)
}

// New connects to the bucket and opens the cache. It fails when the
// configuration is incomplete, no credentials are given, the bucket does
// not exist or refuses the credentials; an endpoint that does not answer
// is not an error here (Check reports it), so a replica restarted while
// the bucket is away still serves what its cache holds.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Endpoint == "" || cfg.Bucket == "" {
		return nil, errors.New("an S3 endpoint and bucket are required")
	}
	if cfg.PartSize == 0 {
		cfg.PartSize = defaultPartSize
	}
	sse, err := ParseSSE(cfg.SSE)
	if err != nil {
		return nil, err
	}
	creds, err := credentialsOf(cfg.CredentialsFile)
	if err != nil {
		return nil, err
	}
	tr := cfg.Transport
	if tr == nil {
		if tr, err = transport(cfg); err != nil {
			return nil, err
		}
	}
	lookup := minio.BucketLookupAuto
	if cfg.PathStyle {
		lookup = minio.BucketLookupPath
	}
	client, err := minio.New(cfg.Endpoint, &minio.Options{Creds: creds, Secure: !cfg.Insecure, Region: cfg.Region, Transport: tr, BucketLookup: lookup})
	if err != nil {
		return nil, fmt.Errorf("S3 endpoint %s: %w", cfg.Endpoint, err)
	}
	s := &Store{cfg: cfg, client: client, sse: sse}
	if err := s.Check(ctx); err != nil && !errors.Is(err, errUnreachable) {
		return nil, err
	}
	if s.cache, err = openCache(cfg.CacheDir, cfg.CacheSize); err != nil {
		return nil, err
	}
	return s, nil
}

func credentialsOf(file string) (*credentials.Credentials, error) {
	if file != "" {
		if _, err := os.Stat(file); err != nil {
			return nil, fmt.Errorf("S3 credentials file: %w", err)
		}
		c := credentials.NewFileAWSCredentials(file, "default")
		if v, err := c.GetWithContext(&credentials.CredContext{}); err != nil || v.AccessKeyID == "" {
			return nil, fmt.Errorf("S3 credentials file %s has no [default] aws_access_key_id and aws_secret_access_key", file)
		}
		return c, nil
	}
	if os.Getenv("AWS_ACCESS_KEY_ID") == "" || os.Getenv("AWS_SECRET_ACCESS_KEY") == "" {
		return nil, errors.New("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or --s3-credentials-file")
	}
	return credentials.NewEnvAWS(), nil
}

func transport(cfg Config) (*http.Transport, error) {
	tr, err := minio.DefaultTransport(!cfg.Insecure)
	if err != nil {
		return nil, err
	}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("S3 CA file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("S3 CA file %s holds no PEM certificate", cfg.CAFile)
		}
		if tr.TLSClientConfig == nil {
			tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	return tr, nil
}

// errUnreachable marks a Check that got no answer from the endpoint.
var errUnreachable = errors.New("unreachable")

// Check reports whether the bucket answers and accepts the credentials,
// with one HEAD of the bucket.
func (s *Store) Check(ctx context.Context) error {
	ok, err := s.client.BucketExists(ctx, s.cfg.Bucket)
	switch {
	case err == nil && ok:
		return nil
	case err == nil:
		return fmt.Errorf("bucket %s does not exist at %s", s.cfg.Bucket, s.cfg.Endpoint)
	}
	return s.describe(err, "bucket")
}

// describe turns a client error into one that names the bucket and says
// which of the usual things went wrong.
func (s *Store) describe(err error, what string) error {
	resp := minio.ToErrorResponse(err)
	where := fmt.Sprintf("bucket %s at %s", s.cfg.Bucket, s.cfg.Endpoint)
	switch resp.Code {
	case "NoSuchBucket":
		return fmt.Errorf("%s: bucket does not exist", where)
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken":
		return fmt.Errorf("%s refused the credentials (%s): %s", where, resp.Code, what)
	case "NoSuchKey":
		return fmt.Errorf("%s: %s: %w", where, what, storage.ErrNotFound)
	}
	var netErr net.Error
	var urlErr *url.Error
	if errors.As(err, &netErr) || errors.As(err, &urlErr) {
		return fmt.Errorf("%s is %w: %s: %v", where, errUnreachable, what, err)
	}
	if resp.StatusCode == http.StatusForbidden {
		return fmt.Errorf("%s refused the credentials: %s: %v", where, what, err)
	}
	return fmt.Errorf("%s: %s: %w", where, what, err)
}

// Key is the object key of a "sha256:<hex>" digest.
func (s *Store) Key(digest string) string {
	return s.cfg.Prefix + "sha256/" + strings.TrimPrefix(digest, "sha256:")
}

// Put writes size bytes of r as the object of digest, in parts read
// straight from r: never the whole blob in memory. Writing a digest again
// writes the same bytes.
func (s *Store) Put(ctx context.Context, digest string, size int64, r io.ReaderAt) error {
	_, err := s.client.PutObject(ctx, s.cfg.Bucket, s.Key(digest), io.NewSectionReader(r, 0, size), size, minio.PutObjectOptions{
		ContentType: "application/octet-stream", PartSize: s.cfg.PartSize, NumThreads: 2,
		ServerSideEncryption: s.sse, DisableContentSha256: !s.cfg.Insecure,
	})
	if err != nil {
		return s.describe(err, "put "+digest)
	}
	return nil
}

// Stat returns the stored size of digest's object.
func (s *Store) Stat(ctx context.Context, digest string) (int64, error) {
	info, err := s.client.StatObject(ctx, s.cfg.Bucket, s.Key(digest), minio.StatObjectOptions{})
	if err != nil {
		return 0, s.describe(err, "stat "+digest)
	}
	return info.Size, nil
}

// Delete removes digest's object and its cached copy; a missing object is
// not an error.
func (s *Store) Delete(ctx context.Context, digest string) error {
	s.cache.remove(strings.TrimPrefix(digest, "sha256:"))
	if err := s.client.RemoveObject(ctx, s.cfg.Bucket, s.Key(digest), minio.RemoveObjectOptions{}); err != nil {
		return s.describe(err, "delete "+digest)
	}
	return nil
}

// Presign returns a GET URL of digest's object valid for ttl.
func (s *Store) Presign(ctx context.Context, digest string, ttl time.Duration) (*url.URL, error) {
	u, err := s.client.PresignedGetObject(ctx, s.cfg.Bucket, s.Key(digest), ttl, nil)
	if err != nil {
		return nil, s.describe(err, "presign "+digest)
	}
	return u, nil
}

// Walk calls fn for every blob object under the prefix.
func (s *Store) Walk(ctx context.Context, fn func(digest string, size int64, modified time.Time) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the listing when fn fails
	prefix := s.cfg.Prefix + "sha256/"
	for o := range s.client.ListObjects(ctx, s.cfg.Bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			return s.describe(o.Err, "list objects")
		}
		hexPart := strings.TrimPrefix(o.Key, prefix)
		if !isDigestHex(hexPart) {
			continue
		}
		if err := fn("sha256:"+hexPart, o.Size, o.LastModified); err != nil {
			return err
		}
	}
	return nil
}

// SweepIncomplete aborts the multipart uploads under the prefix started
// more than olderThan ago, and returns how many.
func (s *Store) SweepIncomplete(ctx context.Context, olderThan time.Duration) (int, error) {
	cutoff := time.Now().Add(-olderThan)
	core := minio.Core{Client: s.client}
	n := 0
	// Listed whole and filtered here: MinIO lists multipart uploads only
	// for an exact key, or every key; there are few of them.
	for u := range s.client.ListIncompleteUploads(ctx, s.cfg.Bucket, "", true) {
		if u.Err != nil {
			return n, s.describe(u.Err, "list multipart uploads")
		}
		if !strings.HasPrefix(u.Key, s.cfg.Prefix+"sha256/") || u.Initiated.After(cutoff) {
			continue
		}
		if err := core.AbortMultipartUpload(ctx, s.cfg.Bucket, u.Key, u.UploadID); err != nil {
			return n, s.describe(err, "abort multipart upload of "+u.Key)
		}
		n++
	}
	return n, nil
}

func isDigestHex(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
