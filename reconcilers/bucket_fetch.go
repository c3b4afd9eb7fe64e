package reconcilers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/fluxcd/pkg/sourceignore"
	"github.com/fluxcd/pkg/sourceignore/gitignore"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"
	"golang.org/x/sync/errgroup"

	"github.com/sourceraft/sourceraft/archive"
)

// bucketFetchConcurrency bounds the objects downloaded at once.
const bucketFetchConcurrency = 8

// bucketObject is one listed object: its key, ETag and size.
type bucketObject struct {
	Key  string
	ETag string
	Size int64
}

// bucketClient is what fetching needs of an object store. s3Client
// implements it for the generic and aws providers.
type bucketClient interface {
	// BucketExists reports whether the bucket exists (false, nil if not).
	BucketExists(ctx context.Context, bucket string) (bool, error)
	// ListObjects calls visit for every object under prefix, in any order,
	// and stops at the first error.
	ListObjects(ctx context.Context, bucket, prefix string, visit func(bucketObject) error) error
	// GetObject opens an object's content and returns the ETag of what it
	// serves; a missing object fails with an error IsNotFound accepts.
	GetObject(ctx context.Context, bucket, key string) (io.ReadCloser, string, error)
	IsNotFound(err error) bool
}

// errBucketLimit marks a bucket over one of the fetch limits.
var errBucketLimit = errors.New("bucket limit exceeded")

// errObjectKey marks an object key that cannot be written under the
// working directory.
var errObjectKey = errors.New("invalid object key")

// bucketLimits bound what one reconcile downloads: the sum of the object
// sizes, each object's size, and the files and directories the artifact
// will hold (the archive's entry count). Zero or less is no bound.
type bucketLimits struct {
	MaxSize       int64
	MaxObjectSize int64
	MaxEntries    int
}

// bucketIndex maps object keys to ETags. Its digest is the revision, in
// Flux's form: sha256 over "<key> <etag>\n" for every key in sorted order,
// written sha256:<hex>, so an unchanged bucket keeps its revision.
type bucketIndex struct {
	mu    sync.Mutex
	etags map[string]string
	sizes map[string]int64
}

func newBucketIndex() *bucketIndex {
	return &bucketIndex{etags: map[string]string{}, sizes: map[string]int64{}}
}

func (x *bucketIndex) add(key, etag string, size int64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.etags[key], x.sizes[key] = etag, size
}

func (x *bucketIndex) remove(key string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.etags, key)
	delete(x.sizes, key)
}

// keys returns the indexed keys in sorted order.
func (x *bucketIndex) keys() []string {
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
func (x *bucketIndex) Len() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.etags)
}

// revision is the index digest, sha256:<hex>.
func (x *bucketIndex) revision() string {
	h := sha256.New()
	keys := x.keys()
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, k := range keys {
		fmt.Fprintf(h, "%s %s\n", k, x.etags[k])
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// bucketObjectPath is the slash path under the working directory where an
// object is written: its key without leading slashes (as Flux, which joins
// the key to the directory). A key with empty, "." or ".." segments, a
// backslash or a NUL byte is refused: it could name a file outside the
// directory or two keys could land on one file.
func bucketObjectPath(key string) (string, error) {
	p := strings.TrimLeft(key, "/")
	if p == "" || strings.ContainsAny(p, "\\\x00") || path.Clean(p) != p || p == ".." || strings.HasPrefix(p, "../") {
		return "", fmt.Errorf("%w '%s': not a relative path inside the bucket (exclude it with spec.ignore)", errObjectKey, key)
	}
	for _, s := range strings.Split(p, "/") {
		if s == "." || s == ".." {
			return "", fmt.Errorf("%w '%s': not a relative path inside the bucket (exclude it with spec.ignore)", errObjectKey, key)
		}
	}
	return p, nil
}

// checkBucketExists fails unless the bucket exists and can be reached with
// the client's credentials.
func checkBucketExists(ctx context.Context, c bucketClient, bucket string) error {
	exists, err := c.BucketExists(ctx, bucket)
	if err != nil {
		return fmt.Errorf("failed to confirm existence of '%s' bucket: %w", bucket, err)
	}
	if !exists {
		return fmt.Errorf("bucket '%s' not found", bucket)
	}
	return nil
}

// bucketIgnoreFilter loads the .sourceignore object at the root of the
// bucket, if any, and returns the filter of its rules followed by spec.ignore
// (which takes precedence). As in Flux, Bucket has no built-in exclusions.
func bucketIgnoreFilter(ctx context.Context, c bucketClient, bucket string, specIgnore *string, maxSize int64) (archive.Filter, error) {
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
			return nil, fmt.Errorf("%w: object '%s' is larger than the per-object limit of %d bytes", errBucketLimit, sourceignore.IgnoreFile, maxSize)
		}
		ps = sourceignore.ReadPatterns(strings.NewReader(string(data)), nil)
	}
	if specIgnore != nil {
		ps = append(ps, sourceignore.ReadPatterns(strings.NewReader(*specIgnore), nil)...)
	}
	return archive.MatcherFilter(sourceignore.NewMatcher(ps)), nil
}

// indexBucket lists the objects under prefix that the ignore rules keep
// into an index, failing as soon as the listing is over a limit or holds a
// key that cannot be written safely. Keys ending in "/" (directory
// markers) and the root .sourceignore are left out, as in Flux.
func indexBucket(ctx context.Context, c bucketClient, bucket, prefix string, filter archive.Filter, limits bucketLimits) (*bucketIndex, error) {
	idx := newBucketIndex()
	var (
		total int64
		paths = map[string]string{} // object path → key
		dirs  = map[string]bool{}   // directories the artifact will hold
	)
	err := c.ListObjects(ctx, bucket, prefix, func(o bucketObject) error {
		if strings.HasSuffix(o.Key, "/") || o.Key == sourceignore.IgnoreFile {
			return nil
		}
		if filter(strings.TrimLeft(o.Key, "/"), false) {
			return nil
		}
		p, err := bucketObjectPath(o.Key)
		if err != nil {
			return err
		}
		if other, ok := paths[p]; ok {
			return fmt.Errorf("%w '%s': lands on the same file as '%s'", errObjectKey, o.Key, other)
		}
		paths[p] = o.Key
		if limits.MaxObjectSize > 0 && o.Size > limits.MaxObjectSize {
			return fmt.Errorf("%w: object '%s' is %d bytes, the per-object limit is %d", errBucketLimit, o.Key, o.Size, limits.MaxObjectSize)
		}
		total += o.Size
		if limits.MaxSize > 0 && total > limits.MaxSize {
			return fmt.Errorf("%w: objects hold at least %d bytes, the limit is %d", errBucketLimit, total, limits.MaxSize)
		}
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
		if n := len(paths) + len(dirs); limits.MaxEntries > 0 && n > limits.MaxEntries {
			return fmt.Errorf("%w: objects make at least %d files and directories, the limit is %d", errBucketLimit, n, limits.MaxEntries)
		}
		idx.add(o.Key, o.ETag, o.Size)
		return nil
	})
	if err != nil {
		if errors.Is(err, errBucketLimit) || errors.Is(err, errObjectKey) {
			return nil, err
		}
		return nil, fmt.Errorf("indexation of objects from bucket '%s' failed: %w", bucket, err)
	}
	// An object and a directory of the same name cannot both be files.
	for p, key := range paths {
		if dirs[p] {
			return nil, fmt.Errorf("%w '%s': is both an object and the directory of other objects", errObjectKey, key)
		}
	}
	return idx, nil
}

// downloadBucket fetches every indexed object into dir, writing only
// through an os.Root on dir so nothing can land outside it, and keeps the
// limits on the bytes actually received (an object may have grown since
// it was listed). The index is updated with the ETag of what was fetched,
// and an object deleted since the listing is dropped from it, so the
// revision describes exactly the files written.
func downloadBucket(ctx context.Context, c bucketClient, bucket string, idx *bucketIndex, dir string, limits bucketLimits) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	var total atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(bucketFetchConcurrency)
	for _, key := range idx.keys() {
		g.Go(func() error {
			p, err := bucketObjectPath(key)
			if err != nil {
				return err
			}
			etag, err := fetchObject(gctx, c, bucket, key, root, p, limits, &total)
			if err != nil {
				if c.IsNotFound(err) {
					idx.remove(key)
					return nil
				}
				if errors.Is(err, errBucketLimit) {
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
		if errors.Is(err, errBucketLimit) || errors.Is(err, errObjectKey) {
			return err
		}
		return fmt.Errorf("fetch from bucket '%s' failed: %w", bucket, err)
	}
	return nil
}

// fetchObject copies one object to p under root and returns its ETag.
func fetchObject(ctx context.Context, c bucketClient, bucket, key string, root *os.Root, p string, limits bucketLimits, total *atomic.Int64) (string, error) {
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
		return "", fmt.Errorf("%w: object '%s' is over the per-object limit of %d bytes", errBucketLimit, key, limits.MaxObjectSize)
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
		return n, fmt.Errorf("%w: objects hold at least %d bytes (reading '%s'), the limit is %d", errBucketLimit, got, t.key, t.max)
	}
	return n, err
}

// s3Client is a bucketClient for S3-compatible stores through minio-go.
type s3Client struct {
	*minio.Client
}

// newS3Client builds the client of a generic or aws Bucket: static keys
// from the secret's accesskey and secretkey when given, otherwise anonymous
// for generic and the minio-go IAM chain (environment, web identity, ECS
// and EC2 metadata) for aws, as Flux does.
func newS3Client(obj *sourcev1.Bucket, secret map[string][]byte) (*s3Client, error) {
	opts := &minio.Options{Region: obj.Spec.Region, Secure: !obj.Spec.Insecure}
	switch {
	case secret != nil:
		opts.Creds = credentials.NewStaticV4(string(secret["accesskey"]), string(secret["secretkey"]), "")
	case obj.Spec.Provider == sourcev1.BucketProviderAmazon:
		opts.Creds = credentials.NewIAM("")
	}
	c, err := minio.New(obj.Spec.Endpoint, opts)
	if err != nil {
		return nil, err
	}
	return &s3Client{Client: c}, nil
}

func (c *s3Client) BucketExists(ctx context.Context, bucket string) (bool, error) {
	return c.Client.BucketExists(ctx, bucket)
}

func (c *s3Client) ListObjects(ctx context.Context, bucket, prefix string, visit func(bucketObject) error) error {
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
		if err := visit(bucketObject{Key: o.Key, ETag: o.ETag, Size: o.Size}); err != nil {
			return err
		}
	}
	return ctx.Err()
}

func (c *s3Client) GetObject(ctx context.Context, bucket, key string) (io.ReadCloser, string, error) {
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

func (c *s3Client) IsNotFound(err error) bool {
	return minio.ToErrorResponse(err).Code == minio.NoSuchKey
}
