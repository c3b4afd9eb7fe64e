package bucket

import (
	"errors"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/sourceraft/sourceraft/internal/filetest"
	"github.com/sourceraft/sourceraft/internal/minioserver"
)

// s3Fetch is what a Bucket reconcile does against a real S3 server:
// existence check, ignore rules, index, download.
func s3Fetch(t *testing.T, o S3Options, bucket, prefix string, ignore *string, limits Limits) (*Index, map[string]string, error) {
	t.Helper()
	c, err := NewS3(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := CheckExists(ctx, c, bucket); err != nil {
		return nil, nil, err
	}
	filter, err := IgnoreFilter(ctx, c, bucket, ignore, limits.MaxObjectSize)
	if err != nil {
		return nil, nil, err
	}
	idx, err := List(ctx, c, bucket, prefix, filter, limits)
	if err != nil {
		return nil, nil, err
	}
	dir := t.TempDir()
	if err := Download(ctx, c, bucket, idx, dir, limits); err != nil {
		return nil, nil, err
	}
	return idx, filetest.ReadTree(t, dir), nil
}

func TestS3FetchFromMinIO(t *testing.T) {
	m := minioserver.Shared(t)
	keys := S3Options{Endpoint: m.Endpoint, Insecure: true, AccessKey: minioserver.User, SecretKey: minioserver.Password}
	name := m.NewBucket(t, map[string]string{
		"app/deploy.yaml": "deploy", "app/notes.md": "notes", "other/x.yaml": "x",
		".sourceignore": "*.md\n",
	})

	idx, files, err := s3Fetch(t, keys, name, "", nil, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 || files["app/deploy.yaml"] != "deploy" || files["other/x.yaml"] != "x" {
		t.Fatalf("files %v, want the two objects .sourceignore keeps", files)
	}
	rev := idx.Revision(digest.SHA256)

	_, files, err = s3Fetch(t, keys, name, "app/", nil, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 1 || files["app/deploy.yaml"] != "deploy" {
		t.Fatalf("files under the prefix %v", files)
	}

	// The revision is a digest of keys and ETags: it moves with content.
	again, _, err := s3Fetch(t, keys, name, "", nil, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if again.Revision(digest.SHA256) != rev {
		t.Errorf("revision of an unchanged bucket moved: %s -> %s", rev, again.Revision(digest.SHA256))
	}
	m.Put(t, name, map[string]string{"other/x.yaml": "x2"})
	changed, files, err := s3Fetch(t, keys, name, "", nil, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if changed.Revision(digest.SHA256) == rev || files["other/x.yaml"] != "x2" {
		t.Errorf("after a change: revision %s (was %s), files %v", changed.Revision(digest.SHA256), rev, files)
	}

	if _, _, err := s3Fetch(t, keys, name, "", nil, Limits{MaxObjectSize: 3}); !errors.Is(err, ErrLimit) {
		t.Errorf("object over the limit: error %v, want ErrLimit", err)
	}
	if _, _, err := s3Fetch(t, keys, "no-such-bucket", "", nil, Limits{}); !errors.Is(err, ErrBucketNotFound) || !strings.Contains(err.Error(), "bucket 'no-such-bucket' not found") {
		t.Errorf("missing bucket: error %v, want ErrBucketNotFound", err)
	}
	wrong := keys
	wrong.SecretKey = "not-the-secret-key"
	if _, _, err := s3Fetch(t, wrong, name, "", nil, Limits{}); err == nil || errors.Is(err, ErrBucketNotFound) {
		t.Errorf("wrong secret key: error %v, want the server's refusal", err)
	}
	anonymous := S3Options{Endpoint: m.Endpoint, Insecure: true}
	if _, _, err := s3Fetch(t, anonymous, name, "", nil, Limits{}); err == nil {
		t.Error("anonymous fetch of a private bucket succeeded")
	}
}

func TestNewS3RefusesInvalidEndpoints(t *testing.T) {
	for _, e := range []string{"", "http://127.0.0.1:9000", "127.0.0.1:9000/bucket"} {
		if _, err := NewS3(S3Options{Endpoint: e}); !errors.Is(err, ErrInvalidEndpoint) {
			t.Errorf("endpoint %q: error %v, want ErrInvalidEndpoint", e, err)
		}
	}
}
