package bucket

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/sourceraft/sourceraft/archive"
	"github.com/sourceraft/sourceraft/internal/filetest"
)

// bucketMemClient is a Client over a map, for what a real S3 server
// such as MinIO refuses to hold (keys with ".." segments, which AWS S3
// accepts) or cannot be made to do on cue (objects that change between
// listing and download).
type bucketMemClient struct {
	objects map[string]string
	// listed overrides the listing's sizes and ETags (key → object), as
	// when an object changed after it was listed.
	listed map[string]Object
}

var errBucketMemNotFound = errors.New("NoSuchKey")

func (c *bucketMemClient) BucketExists(context.Context, string) (bool, error) { return true, nil }

func (c *bucketMemClient) ListObjects(_ context.Context, _, prefix string, visit func(Object) error) error {
	keys := make([]string, 0, len(c.objects))
	for k := range c.objects {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		o, ok := c.listed[k]
		if !ok {
			o = Object{Key: k, ETag: bucketMemETag(c.objects[k]), Size: int64(len(c.objects[k]))}
		}
		if err := visit(o); err != nil {
			return err
		}
	}
	return nil
}

func (c *bucketMemClient) GetObject(_ context.Context, _, key string) (io.ReadCloser, string, error) {
	content, ok := c.objects[key]
	if !ok {
		return nil, "", errBucketMemNotFound
	}
	return io.NopCloser(strings.NewReader(content)), bucketMemETag(content), nil
}

func (c *bucketMemClient) IsNotFound(err error) bool { return errors.Is(err, errBucketMemNotFound) }

func bucketMemETag(content string) string {
	sum := sha256.Sum256([]byte(content))
	return hex.EncodeToString(sum[:8])
}

// bucketFetch runs what reconcileSource does: ignore rules, index, download.
func bucketFetch(t *testing.T, c Client, dir string, ignore *string, limits Limits) (*Index, error) {
	t.Helper()
	ctx := context.Background()
	filter, err := IgnoreFilter(ctx, c, "b", ignore, limits.MaxObjectSize)
	if err != nil {
		return nil, err
	}
	idx, err := List(ctx, c, "b", "", filter, limits)
	if err != nil {
		return nil, err
	}
	return idx, Download(ctx, c, "b", idx, dir, limits)
}

func TestBucketRevisionIsFluxIndexDigest(t *testing.T) {
	idx := NewIndex()
	idx.Add("b/y.yaml", "etag-2", 1)
	idx.Add("a.yaml", "etag-1", 1)
	listing := []byte("a.yaml etag-1\nb/y.yaml etag-2\n")
	sum := sha256.Sum256(listing)
	if got, want := idx.Revision(digest.SHA256), "sha256:"+hex.EncodeToString(sum[:]); got != want {
		t.Fatalf("revision %s, want %s", got, want)
	}
	empty := sha256.Sum256(nil)
	if got := NewIndex().Revision(digest.SHA256); got != "sha256:"+hex.EncodeToString(empty[:]) {
		t.Fatalf("empty revision %s", got)
	}
	// Flux's --artifact-digest-algo: the same listing in another algorithm.
	sum512 := sha512.Sum512(listing)
	if got, want := idx.Revision(digest.SHA512), "sha512:"+hex.EncodeToString(sum512[:]); got != want {
		t.Fatalf("sha512 revision %s, want %s", got, want)
	}
}

func TestBucketObjectPath(t *testing.T) {
	deep := func(depth int) string { return strings.Repeat("d/", depth) + "f" }
	for key, want := range map[string]string{
		"a.yaml": "a.yaml", "dir/a.yaml": "dir/a.yaml", "/etc/x": "etc/x", "//etc/x": "etc/x", "a..b/c": "a..b/c",
		deep(archive.MaxEntryDepth): deep(archive.MaxEntryDepth),
	} {
		if got, err := ObjectPath(key); err != nil || got != want {
			t.Errorf("ObjectPath(%q) = %q, %v; want %q", key, got, err, want)
		}
	}
	for _, key := range []string{
		"../../x", "..", "a/../../x", "a/..", "./a", "a/./b", "a//b", "/", "", "..\\..\\x", "a\x00b", "/../x",
		deep(archive.MaxEntryDepth + 1),
	} {
		if got, err := ObjectPath(key); !errors.Is(err, ErrObjectKey) {
			t.Errorf("ObjectPath(%q) = %q, %v; want an invalid key error", key, got, err)
		}
	}
}

func TestBucketHostileKeysNeverEscape(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "work", "dir")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"../../x", "../escaped", "a/../../../x", "/../x"} {
		c := &bucketMemClient{objects: map[string]string{"ok.yaml": "ok", key: "MUST-NOT-ESCAPE"}}
		_, err := bucketFetch(t, c, dir, nil, Limits{})
		if !errors.Is(err, ErrObjectKey) || !strings.Contains(err.Error(), key) {
			t.Errorf("key %q: error %v, want an invalid key error naming it", key, err)
		}
	}
	// Nothing was written anywhere: the keys are refused while indexing.
	if files := filetest.ReadTree(t, parent); len(files) != 0 {
		t.Fatalf("files written: %v", files)
	}

	// Excluded by the ignore rules, the same keys are harmless.
	ignore := "x\nescaped\n"
	c := &bucketMemClient{objects: map[string]string{"ok.yaml": "ok", "../../x": "no", "../escaped": "no"}}
	if _, err := bucketFetch(t, c, dir, &ignore, Limits{}); err != nil {
		t.Fatalf("ignored hostile keys: %v", err)
	}
	if files := filetest.ReadTree(t, parent); len(files) != 1 || files["work/dir/ok.yaml"] != "ok" {
		t.Fatalf("files written: %v", files)
	}
}

func TestBucketDownloadWritesOnlyInsideRoot(t *testing.T) {
	// Even a key that slipped past the index cannot leave the directory:
	// downloads go through an os.Root, which also refuses symlinks out.
	parent := t.TempDir()
	dir := filepath.Join(parent, "dir")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(parent, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	c := &bucketMemClient{objects: map[string]string{"link/x": "MUST-NOT-ESCAPE"}}
	idx := NewIndex()
	idx.Add("link/x", bucketMemETag("MUST-NOT-ESCAPE"), 15)
	if err := Download(context.Background(), c, "b", idx, dir, Limits{}); err == nil {
		t.Fatal("download through a symlink out of the directory succeeded")
	}
	if _, err := os.Stat(filepath.Join(parent, "x")); err == nil {
		t.Fatal("an object was written outside the directory")
	}
}

func TestBucketKeyConflicts(t *testing.T) {
	for name, objects := range map[string]map[string]string{
		"same file":           {"/a.yaml": "1", "a.yaml": "2"},
		"file and directory":  {"a": "1", "a/b": "2"},
		"file and deeper dir": {"a/b": "1", "a/b/c/d": "2"},
	} {
		_, err := bucketFetch(t, &bucketMemClient{objects: objects}, t.TempDir(), nil, Limits{})
		if !errors.Is(err, ErrObjectKey) {
			t.Errorf("%s: error %v, want an invalid key error", name, err)
		}
	}
}

func TestBucketLimits(t *testing.T) {
	objects := map[string]string{"a/1.yaml": "1234", "a/2.yaml": "5678", "b.yaml": "90"}
	tests := []struct {
		name    string
		limits  Limits
		listed  map[string]Object
		wantErr string
	}{
		{"within limits", Limits{MaxSize: 10, MaxObjectSize: 4, MaxEntries: 4}, nil, ""},
		{"total size", Limits{MaxSize: 9}, nil, "objects hold at least 10 bytes, the limit is 9"},
		{"object size", Limits{MaxObjectSize: 3}, nil, "object 'a/1.yaml' is 4 bytes, the per-object limit is 3"},
		{"entries count directories", Limits{MaxEntries: 3}, nil, "at least 4 files and directories, the limit is 3"},
		// The server listed smaller objects than it then served.
		{"object grew after listing", Limits{MaxObjectSize: 4},
			map[string]Object{"b.yaml": {Key: "b.yaml", ETag: "old", Size: 1}}, ""},
		{"object over limit after listing", Limits{MaxObjectSize: 3},
			map[string]Object{"a/1.yaml": {Key: "a/1.yaml", ETag: "old", Size: 1}, "a/2.yaml": {Key: "a/2.yaml", ETag: "old", Size: 1}},
			"over the per-object limit of 3 bytes"},
		{"total over limit after listing", Limits{MaxSize: 8},
			map[string]Object{"a/1.yaml": {Key: "a/1.yaml", ETag: "old", Size: 1}},
			"the limit is 8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &bucketMemClient{objects: objects, listed: tt.listed}
			dir := t.TempDir()
			idx, err := bucketFetch(t, c, dir, nil, tt.limits)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if got := filetest.ReadTree(t, dir); len(got) != 3 || got["b.yaml"] != "90" {
					t.Fatalf("files %v", got)
				}
				// The revision names what was downloaded, not what was listed.
				want := NewIndex()
				for k, v := range objects {
					want.Add(k, bucketMemETag(v), int64(len(v)))
				}
				if idx.Revision(digest.SHA256) != want.Revision(digest.SHA256) {
					t.Fatalf("revision %s, want that of the downloaded objects %s", idx.Revision(digest.SHA256), want.Revision(digest.SHA256))
				}
				return
			}
			if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want a limit error with %q", err, tt.wantErr)
			}
		})
	}
}

func TestBucketObjectGoneAfterListing(t *testing.T) {
	c := &bucketMemClient{
		objects: map[string]string{"a.yaml": "a"},
		listed:  map[string]Object{},
	}
	ctx := context.Background()
	idx, err := List(ctx, c, "b", "", archive.Filter(func(string, bool) bool { return false }), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	idx.Add("gone.yaml", "e", 1)
	if err := Download(ctx, c, "b", idx, t.TempDir(), Limits{}); err != nil {
		t.Fatal(err)
	}
	if keys := idx.keys(); len(keys) != 1 || keys[0] != "a.yaml" {
		t.Fatalf("index keys %v, want the vanished object dropped", keys)
	}
}

func TestBucketSourceIgnore(t *testing.T) {
	c := &bucketMemClient{objects: map[string]string{
		".sourceignore": "*.md\n!keep.md\n", "a.yaml": "a", "doc.md": "d", "keep.md": "k", "dir/": "",
		".git/config": "g", // Bucket has no built-in exclusions, as in Flux.
	}}
	dir := t.TempDir()
	extra := "a.yaml\n"
	if _, err := bucketFetch(t, c, dir, &extra, Limits{}); err != nil {
		t.Fatal(err)
	}
	got := filetest.ReadTree(t, dir)
	if len(got) != 2 || got["keep.md"] != "k" || got[".git/config"] != "g" {
		t.Fatalf("files %v, want keep.md and .git/config only", got)
	}
}

func TestBucketEndpointValidation(t *testing.T) {
	if err := ValidateEndpoint("s3.amazonaws.com"); err != nil {
		t.Errorf("plain endpoint: %v", err)
	}
	if err := ValidateEndpoint("minio.local:9000"); err != nil {
		t.Errorf("endpoint with port: %v", err)
	}
	for _, e := range []string{"", "https://s3.amazonaws.com", "minio:9000/bucket", "user@minio"} {
		if err := ValidateEndpoint(e); !errors.Is(err, ErrInvalidEndpoint) {
			t.Errorf("endpoint %q: error %v, want ErrInvalidEndpoint", e, err)
		}
	}
}
