// Package bucket lists and downloads the objects of a bucket, in an
// S3-compatible store (through minio-go), Google Cloud Storage (through
// cloud.google.com/go/storage) or Azure Blob Storage (through azblob),
// the way Flux's Bucket does: ignore rules from
// the bucket's .sourceignore and the caller's, an index of keys and ETags
// whose digest is the revision, and downloads bounded by size and entry
// limits that write only inside the target directory. It knows the stores
// and nothing of Kubernetes: credentials come in as values, and the errors
// below tell the caller which condition to set.
package bucket

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/fluxcd/pkg/sourceignore"
	"github.com/fluxcd/pkg/sourceignore/gitignore"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/sourceraft/sourceraft/archive"
)

// fetchConcurrency bounds the objects downloaded at once.
const fetchConcurrency = 8

// The errors fetching fails with, for errors.Is; each is wrapped with
// what was wrong.
var (
	// ErrLimit: the bucket is over one of the fetch limits.
	ErrLimit = errors.New("bucket limit exceeded")
	// ErrObjectKey: an object key cannot be written as a file under the
	// download directory.
	ErrObjectKey = errors.New("invalid object key")
	// ErrBucketNotFound: the bucket does not exist (its message follows
	// the bucket's name, as in Flux's "bucket 'name' not found").
	ErrBucketNotFound = errors.New("not found")
	// ErrInvalidEndpoint: the endpoint is not host[:port].
	ErrInvalidEndpoint = errors.New("invalid endpoint")
)

// Object is one listed object: its key, ETag and size.
type Object struct {
	Key  string
	ETag string
	Size int64
}

// Client is what fetching needs of an object store. S3 implements it for
// the generic and aws providers, GCS for gcp, Azure for azure.
type Client interface {
	// BucketExists reports whether the bucket exists (false, nil if not).
	BucketExists(ctx context.Context, bucket string) (bool, error)
	// ListObjects calls visit for every object under prefix, in any order,
	// and stops at the first error.
	ListObjects(ctx context.Context, bucket, prefix string, visit func(Object) error) error
	// GetObject opens an object's content and returns the ETag of what it
	// serves; a missing object fails with an error IsNotFound accepts.
	GetObject(ctx context.Context, bucket, key string) (io.ReadCloser, string, error)
	IsNotFound(err error) bool
}

// Limits bound what one reconcile downloads: the sum of the object
// sizes, each object's size, and the files and directories the artifact
// will hold (the archive's entry count). Zero or less is no bound.
type Limits struct {
	MaxSize       int64
	MaxObjectSize int64
	MaxEntries    int
}

// Index maps object keys to ETags. Its digest is the revision, in
// Flux's form: the digest of "<key> <etag>\n" for every key in sorted
// order, written <algo>:<hex>, so an unchanged bucket keeps its revision.
type Index struct {
	mu    sync.Mutex
	etags map[string]string
	sizes map[string]int64
}

// NewIndex is an empty index.
func NewIndex() *Index {
	return &Index{etags: map[string]string{}, sizes: map[string]int64{}}
}

// Add records an object.
func (x *Index) Add(key, etag string, size int64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.etags[key], x.sizes[key] = etag, size
}

func (x *Index) remove(key string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.etags, key)
	delete(x.sizes, key)
}

// keys returns the indexed keys in sorted order.
func (x *Index) keys() []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	keys := make([]string, 0, len(x.etags))
	for k := range x.etags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Len is the number of indexed objects.
func (x *Index) Len() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.etags)
}

// Revision is the index digest in algo (Flux's --artifact-digest-algo).
func (x *Index) Revision(algo digest.Algorithm) string {
	d := algo.Digester()
	keys := x.keys()
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, k := range keys {
		fmt.Fprintf(d.Hash(), "%s %s\n", k, x.etags[k])
	}
	return d.Digest().String()
}

// ObjectPath is the slash path under the working directory where an
// object is written: its key without leading slashes (as Flux, which joins
// the key to the directory). A key with empty, "." or ".." segments, a
// backslash or a NUL byte is refused: it could name a file outside the
// directory or two keys could land on one file. So is one more than
// archive.MaxEntryDepth directories deep.
func ObjectPath(key string) (string, error) {
	p := strings.TrimLeft(key, "/")
	if p == "" || strings.ContainsAny(p, "\\\x00") || path.Clean(p) != p || p == ".." || strings.HasPrefix(p, "../") {
		return "", fmt.Errorf("%w '%s': not a relative path inside the bucket (exclude it with the ignore rules)", ErrObjectKey, key)
	}
	for _, s := range strings.Split(p, "/") {
		if s == "." || s == ".." {
			return "", fmt.Errorf("%w '%s': not a relative path inside the bucket (exclude it with the ignore rules)", ErrObjectKey, key)
		}
	}
	if depth := strings.Count(p, "/"); depth > archive.MaxEntryDepth {
		return "", fmt.Errorf("%w '%s': %d directories deep, more than %d (exclude it with the ignore rules)", ErrObjectKey, key, depth, archive.MaxEntryDepth)
	}
	return p, nil
}

// CheckExists fails unless the bucket exists (ErrBucketNotFound) and can
// be reached with the client's credentials.
func CheckExists(ctx context.Context, c Client, bucket string) error {
	exists, err := c.BucketExists(ctx, bucket)
	if err != nil {
		return fmt.Errorf("failed to confirm existence of '%s' bucket: %w", bucket, err)
	}
	if !exists {
		return fmt.Errorf("bucket '%s' %w", bucket, ErrBucketNotFound)
	}
	return nil
}

// IgnoreFilter loads the .sourceignore object at the root of the bucket,
// if any, and returns the filter of its rules followed by specIgnore
// (which takes precedence). As in Flux, Bucket has no built-in exclusions.
func IgnoreFilter(ctx context.Context, c Client, bucket string, specIgnore *string, maxSize int64) (archive.Filter, error) {
	var ps []gitignore.Pattern
	rc, _, err := c.GetObject(ctx, bucket, sourceignore.IgnoreFile)
	switch {
	case err != nil && c.IsNotFound(err):
	case err != nil:
		return nil, fmt.Errorf("failed to get '%s' object: %w", sourceignore.IgnoreFile, err)
	default:
		defer rc.Close()
		var r io.Reader = rc
		if maxSize > 0 {
			r = io.LimitReader(rc, maxSize+1)
		}
		data, err := io.ReadAll(r)
		if err != nil {
			if c.IsNotFound(err) {
				break
			}
			return nil, fmt.Errorf("failed to get '%s' object: %w", sourceignore.IgnoreFile, err)
		}
		if maxSize > 0 && int64(len(data)) > maxSize {
			return nil, fmt.Errorf("%w: object '%s' is larger than the per-object limit of %d bytes", ErrLimit, sourceignore.IgnoreFile, maxSize)
		}
		ps = sourceignore.ReadPatterns(strings.NewReader(string(data)), nil)
	}
	if specIgnore != nil {
		ps = append(ps, sourceignore.ReadPatterns(strings.NewReader(*specIgnore), nil)...)
	}
	return archive.MatcherFilter(sourceignore.NewMatcher(ps)), nil
}

// List indexes the objects under prefix that the ignore rules keep
// into an index, failing as soon as the listing is over a limit or holds a
// key that cannot be written safely. Keys ending in "/" (directory
// markers) and the root .sourceignore are left out, as in Flux.
func List(ctx context.Context, c Client, bucket, prefix string, filter archive.Filter, limits Limits) (*Index, error) {
	idx := NewIndex()
	var (
		total int64
		paths = map[string]string{} // object path → key
		dirs  = map[string]bool{}   // directories the artifact will hold
	)
	err := c.ListObjects(ctx, bucket, prefix, func(o Object) error {
		if strings.HasSuffix(o.Key, "/") || o.Key == sourceignore.IgnoreFile {
			return nil
		}
		if filter(strings.TrimLeft(o.Key, "/"), false) {
			return nil
		}
		p, err := ObjectPath(o.Key)
		if err != nil {
			return err
		}
		if other, ok := paths[p]; ok {
			return fmt.Errorf("%w '%s': lands on the same file as '%s'", ErrObjectKey, o.Key, other)
		}
		paths[p] = o.Key
		if limits.MaxObjectSize > 0 && o.Size > limits.MaxObjectSize {
			return fmt.Errorf("%w: object '%s' is %d bytes, the per-object limit is %d", ErrLimit, o.Key, o.Size, limits.MaxObjectSize)
		}
		total += o.Size
		if limits.MaxSize > 0 && total > limits.MaxSize {
			return fmt.Errorf("%w: objects hold at least %d bytes, the limit is %d", ErrLimit, total, limits.MaxSize)
		}
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
		if n := len(paths) + len(dirs); limits.MaxEntries > 0 && n > limits.MaxEntries {
			return fmt.Errorf("%w: objects make at least %d files and directories, the limit is %d", ErrLimit, n, limits.MaxEntries)
		}
		idx.Add(o.Key, o.ETag, o.Size)
		return nil
	})
	if err != nil {
		if errors.Is(err, ErrLimit) || errors.Is(err, ErrObjectKey) {
			return nil, err
		}
		return nil, fmt.Errorf("indexation of objects from bucket '%s' failed: %w", bucket, err)
	}
	// An object and a directory of the same name cannot both be files.
	for p, key := range paths {
		if dirs[p] {
			return nil, fmt.Errorf("%w '%s': is both an object and the directory of other objects", ErrObjectKey, key)
		}
	}
	return idx, nil
}

// Download fetches every indexed object into dir, writing only
// through an os.Root on dir so nothing can land outside it, and keeps the
// limits on the bytes actually received (an object may have grown since
// it was listed). The index is updated with the ETag of what was fetched,
// and an object deleted since the listing is dropped from it, so the
// revision describes exactly the files written.
func Download(ctx context.Context, c Client, bucket string, idx *Index, dir string, limits Limits) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	var total atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(fetchConcurrency)
	for _, key := range idx.keys() {
		g.Go(func() error {
			p, err := ObjectPath(key)
			if err != nil {
				return err
			}
			etag, err := fetchObject(gctx, c, bucket, key, root, p, limits, &total)
			if err != nil {
				if c.IsNotFound(err) {
					idx.remove(key)
					return nil
				}
				if errors.Is(err, ErrLimit) {
					return err
				}
				return fmt.Errorf("failed to get '%s' object: %w", key, err)
			}
			idx.mu.Lock()
			idx.etags[key] = etag
			idx.mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		if errors.Is(err, ErrLimit) || errors.Is(err, ErrObjectKey) {
			return err
		}
		return fmt.Errorf("fetch from bucket '%s' failed: %w", bucket, err)
	}
	return nil
}

// fetchObject copies one object to p under root and returns its ETag.
func fetchObject(ctx context.Context, c Client, bucket, key string, root *os.Root, p string, limits Limits, total *atomic.Int64) (string, error) {
	rc, etag, err := c.GetObject(ctx, bucket, key)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	if d := path.Dir(p); d != "." {
		if err := root.MkdirAll(d, 0o755); err != nil {
			return "", err
		}
	}
	f, err := root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var r io.Reader = rc
	if limits.MaxObjectSize > 0 {
		r = io.LimitReader(rc, limits.MaxObjectSize+1)
	}
	n, err := io.Copy(f, &totalLimitReader{r: r, total: total, max: limits.MaxSize, key: key})
	if err != nil {
		return "", err
	}
	if limits.MaxObjectSize > 0 && n > limits.MaxObjectSize {
		return "", fmt.Errorf("%w: object '%s' is over the per-object limit of %d bytes", ErrLimit, key, limits.MaxObjectSize)
	}
	return etag, f.Close()
}

// totalLimitReader fails once the bytes read by all objects of one fetch
// exceed max.
type totalLimitReader struct {
	r     io.Reader
	total *atomic.Int64
	max   int64
	key   string
}

func (t *totalLimitReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if got := t.total.Add(int64(n)); t.max > 0 && got > t.max {
		return n, fmt.Errorf("%w: objects hold at least %d bytes (reading '%s'), the limit is %d", ErrLimit, got, t.key, t.max)
	}
	return n, err
}

// S3Options say how to reach an S3-compatible store.
type S3Options struct {
	// Endpoint is host[:port] (see ValidateEndpoint).
	Endpoint string
	Region   string
	// Insecure talks plain HTTP.
	Insecure bool
	// AccessKey and SecretKey are the credentials, with SessionToken when
	// they are temporary (from an STS); without them the client is
	// anonymous.
	AccessKey, SecretKey, SessionToken string
	// TLS, when set and not Insecure, is the TLS configuration of the
	// endpoint (its CA, a client certificate).
	TLS *tls.Config
	// Proxy, when set, carries every request through this HTTP(S) or
	// SOCKS5 proxy, whatever the host: loopback endpoints too, which the
	// environment's proxy rules would skip. User info in the URL is the
	// proxy's basic auth.
	Proxy *url.URL
}

// S3 is a Client for S3-compatible stores through minio-go.
type S3 struct {
	*minio.Client
}

// NewS3 builds the client o describes.
func NewS3(o S3Options) (*S3, error) {
	if err := ValidateEndpoint(o.Endpoint); err != nil {
		return nil, err
	}
	opts := &minio.Options{Region: o.Region, Secure: !o.Insecure}
	tlsConf := o.TLS
	if o.Insecure {
		tlsConf = nil
	}
	if o.Proxy != nil || tlsConf != nil {
		tr, err := minio.DefaultTransport(opts.Secure)
		if err != nil {
			return nil, fmt.Errorf("create the S3 transport: %w", err)
		}
		if o.Proxy != nil {
			tr.Proxy = http.ProxyURL(o.Proxy)
		}
		if tlsConf != nil {
			tr.TLSClientConfig = tlsConf.Clone()
		}
		opts.Transport = tr
	}
	if o.AccessKey != "" || o.SecretKey != "" {
		opts.Creds = credentials.NewStaticV4(o.AccessKey, o.SecretKey, o.SessionToken)
	}
	c, err := minio.New(o.Endpoint, opts)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidEndpoint, err)
	}
	return &S3{Client: c}, nil
}

// ValidateEndpoint accepts what minio-go takes: host[:port], without a
// scheme or a path (S3Options.Insecure chooses http); anything else fails
// with ErrInvalidEndpoint.
func ValidateEndpoint(endpoint string) error {
	switch {
	case endpoint == "":
		return fmt.Errorf("%w: the endpoint is empty", ErrInvalidEndpoint)
	case strings.Contains(endpoint, "://"):
		return fmt.Errorf("%w: '%s' must be host[:port] without a scheme (set insecure for plain HTTP)", ErrInvalidEndpoint, endpoint)
	case strings.ContainsAny(endpoint, "/?#@ "):
		return fmt.Errorf("%w: '%s' must be host[:port] without a path", ErrInvalidEndpoint, endpoint)
	}
	return nil
}
func (c *S3) BucketExists(ctx context.Context, bucket string) (bool, error) {
	return c.Client.BucketExists(ctx, bucket)
}

func (c *S3) ListObjects(ctx context.Context, bucket, prefix string, visit func(Object) error) error {
	// Cancelling stops minio-go's listing goroutine when visit ends early.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for o := range c.Client.ListObjects(ctx, bucket, minio.ListObjectsOptions{
		Prefix: prefix, Recursive: true,
		// Google's S3 interoperability only lists with the V1 API.
		UseV1: s3utils.IsGoogleEndpoint(*c.EndpointURL()),
	}) {
		if o.Err != nil {
			return o.Err
		}
		if err := visit(Object{Key: o.Key, ETag: o.ETag, Size: o.Size}); err != nil {
			return err
		}
	}
	return ctx.Err()
}

func (c *S3) GetObject(ctx context.Context, bucket, key string) (io.ReadCloser, string, error) {
	o, err := c.Client.GetObject(ctx, bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, "", err
	}
	info, err := o.Stat()
	if err != nil {
		o.Close()
		return nil, "", err
	}
	return o, info.ETag, nil
}

func (c *S3) IsNotFound(err error) bool {
	return minio.ToErrorResponse(err).Code == minio.NoSuchKey
}
