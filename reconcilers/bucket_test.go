package reconcilers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/sourceraft/sourceraft/archive"
)

// bucketMemClient is a bucketClient over a map, for what a real S3 server
// such as MinIO refuses to hold (keys with ".." segments, which AWS S3
// accepts) or cannot be made to do on cue (objects that change between
// listing and download).
type bucketMemClient struct {
	objects map[string]string
	// listed overrides the listing's sizes and ETags (key → object), as
	// when an object changed after it was listed.
	listed map[string]bucketObject
}

var errBucketMemNotFound = errors.New("NoSuchKey")

func (c *bucketMemClient) BucketExists(context.Context, string) (bool, error) { return true, nil }

func (c *bucketMemClient) ListObjects(_ context.Context, _, prefix string, visit func(bucketObject) error) error {
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
			o = bucketObject{Key: k, ETag: bucketMemETag(c.objects[k]), Size: int64(len(c.objects[k]))}
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
func bucketFetch(t *testing.T, c bucketClient, dir string, ignore *string, limits bucketLimits) (*bucketIndex, error) {
	t.Helper()
	ctx := context.Background()
	filter, err := bucketIgnoreFilter(ctx, c, "b", ignore, limits.MaxObjectSize)
	if err != nil {
		return nil, err
	}
	idx, err := indexBucket(ctx, c, "b", "", filter, limits)
	if err != nil {
		return nil, err
	}
	return idx, downloadBucket(ctx, c, "b", idx, dir, limits)
}

// bucketTree lists the files under dir, slash path → content.
func bucketTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		files[filepath.ToSlash(rel)] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func TestBucketRevisionIsFluxIndexDigest(t *testing.T) {
	idx := newBucketIndex()
	idx.add("b/y.yaml", "etag-2", 1)
	idx.add("a.yaml", "etag-1", 1)
	sum := sha256.Sum256([]byte("a.yaml etag-1\nb/y.yaml etag-2\n"))
	if got, want := idx.revision(), "sha256:"+hex.EncodeToString(sum[:]); got != want {
		t.Fatalf("revision %s, want %s", got, want)
	}
	empty := sha256.Sum256(nil)
	if got := newBucketIndex().revision(); got != "sha256:"+hex.EncodeToString(empty[:]) {
		t.Fatalf("empty revision %s", got)
	}
}

func TestBucketObjectPath(t *testing.T) {
	for key, want := range map[string]string{
		"a.yaml": "a.yaml", "dir/a.yaml": "dir/a.yaml", "/etc/x": "etc/x", "//etc/x": "etc/x", "a..b/c": "a..b/c",
	} {
		if got, err := bucketObjectPath(key); err != nil || got != want {
			t.Errorf("bucketObjectPath(%q) = %q, %v; want %q", key, got, err, want)
		}
	}
	for _, key := range []string{
		"../../x", "..", "a/../../x", "a/..", "./a", "a/./b", "a//b", "/", "", "..\\..\\x", "a\x00b", "/../x",
	} {
		if got, err := bucketObjectPath(key); !errors.Is(err, errObjectKey) {
			t.Errorf("bucketObjectPath(%q) = %q, %v; want an invalid key error", key, got, err)
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
		_, err := bucketFetch(t, c, dir, nil, bucketLimits{})
		if !errors.Is(err, errObjectKey) || !strings.Contains(err.Error(), key) {
			t.Errorf("key %q: error %v, want an invalid key error naming it", key, err)
		}
	}
	// Nothing was written anywhere: the keys are refused while indexing.
	if files := bucketTree(t, parent); len(files) != 0 {
		t.Fatalf("files written: %v", files)
	}

	// Excluded by spec.ignore, the same keys are harmless.
	ignore := "x\nescaped\n"
	c := &bucketMemClient{objects: map[string]string{"ok.yaml": "ok", "../../x": "no", "../escaped": "no"}}
	if _, err := bucketFetch(t, c, dir, &ignore, bucketLimits{}); err != nil {
		t.Fatalf("ignored hostile keys: %v", err)
	}
	if files := bucketTree(t, parent); len(files) != 1 || files["work/dir/ok.yaml"] != "ok" {
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
	idx := newBucketIndex()
	idx.add("link/x", bucketMemETag("MUST-NOT-ESCAPE"), 15)
	if err := downloadBucket(context.Background(), c, "b", idx, dir, bucketLimits{}); err == nil {
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
		_, err := bucketFetch(t, &bucketMemClient{objects: objects}, t.TempDir(), nil, bucketLimits{})
		if !errors.Is(err, errObjectKey) {
			t.Errorf("%s: error %v, want an invalid key error", name, err)
		}
	}
}

func TestBucketLimits(t *testing.T) {
	objects := map[string]string{"a/1.yaml": "1234", "a/2.yaml": "5678", "b.yaml": "90"}
	tests := []struct {
		name    string
		limits  bucketLimits
		listed  map[string]bucketObject
		wantErr string
	}{
		{"within limits", bucketLimits{MaxSize: 10, MaxObjectSize: 4, MaxEntries: 4}, nil, ""},
		{"total size", bucketLimits{MaxSize: 9}, nil, "objects hold at least 10 bytes, the limit is 9"},
		{"object size", bucketLimits{MaxObjectSize: 3}, nil, "object 'a/1.yaml' is 4 bytes, the per-object limit is 3"},
		{"entries count directories", bucketLimits{MaxEntries: 3}, nil, "at least 4 files and directories, the limit is 3"},
		// The server listed smaller objects than it then served.
		{"object grew after listing", bucketLimits{MaxObjectSize: 4},
			map[string]bucketObject{"b.yaml": {Key: "b.yaml", ETag: "old", Size: 1}}, ""},
		{"object over limit after listing", bucketLimits{MaxObjectSize: 3},
			map[string]bucketObject{"a/1.yaml": {Key: "a/1.yaml", ETag: "old", Size: 1}, "a/2.yaml": {Key: "a/2.yaml", ETag: "old", Size: 1}},
			"over the per-object limit of 3 bytes"},
		{"total over limit after listing", bucketLimits{MaxSize: 8},
			map[string]bucketObject{"a/1.yaml": {Key: "a/1.yaml", ETag: "old", Size: 1}},
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
				if got := bucketTree(t, dir); len(got) != 3 || got["b.yaml"] != "90" {
					t.Fatalf("files %v", got)
				}
				// The revision names what was downloaded, not what was listed.
				want := newBucketIndex()
				for k, v := range objects {
					want.add(k, bucketMemETag(v), int64(len(v)))
				}
				if idx.revision() != want.revision() {
					t.Fatalf("revision %s, want that of the downloaded objects %s", idx.revision(), want.revision())
				}
				return
			}
			if !errors.Is(err, errBucketLimit) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want a limit error with %q", err, tt.wantErr)
			}
		})
	}
}

func TestBucketObjectGoneAfterListing(t *testing.T) {
	c := &bucketMemClient{
		objects: map[string]string{"a.yaml": "a"},
		listed:  map[string]bucketObject{},
	}
	ctx := context.Background()
	idx, err := indexBucket(ctx, c, "b", "", archive.Filter(func(string, bool) bool { return false }), bucketLimits{})
	if err != nil {
		t.Fatal(err)
	}
	idx.add("gone.yaml", "e", 1)
	if err := downloadBucket(ctx, c, "b", idx, t.TempDir(), bucketLimits{}); err != nil {
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
	if _, err := bucketFetch(t, c, dir, &extra, bucketLimits{}); err != nil {
		t.Fatal(err)
	}
	got := bucketTree(t, dir)
	if len(got) != 2 || got["keep.md"] != "k" || got[".git/config"] != "g" {
		t.Fatalf("files %v, want keep.md and .git/config only", got)
	}
}

func TestBucketEndpointValidation(t *testing.T) {
	if err := validateBucketEndpoint("s3.amazonaws.com"); err != nil {
		t.Errorf("plain endpoint: %v", err)
	}
	if err := validateBucketEndpoint("minio.local:9000"); err != nil {
		t.Errorf("endpoint with port: %v", err)
	}
	for _, e := range []string{"", "https://s3.amazonaws.com", "minio:9000/bucket", "user@minio"} {
		if validateBucketEndpoint(e) == nil {
			t.Errorf("endpoint %q accepted", e)
		}
	}
}
