package fsm

import (
	"errors"
	"testing"

	"github.com/sourceraft/sourceraft/storage"
)

// TestAliasNamesTheLastCommit checks the current bucket through an alias:
// it follows commit order (not LastUpdateTime, which ties within a second),
// a path stored again becomes current again, and deleting the current
// artifact leaves the alias unanswered rather than naming an older one.
func TestAliasNamesTheLastCommit(t *testing.T) {
	const (
		older = "ocirepository/default/app/sha256:1.tar.gz"
		newer = "ocirepository/default/app/sha256:2.tar.gz"
		other = "ocirepository/default/other/sha256:1.tar.gz"
		alias = "ocirepository/default/app/latest.tar.gz"
	)
	f := newFSM(t)
	fd := &feeder{f: f}
	current := func() string {
		t.Helper()
		a, err := f.Artifact(mustKey(t, alias))
		if errors.Is(err, storage.ErrNotFound) {
			return ""
		}
		if err != nil {
			t.Fatal(err)
		}
		return a.Path()
	}

	fd.ok(t, storeCmds(t, "u1", older, pattern(1, 100))...)
	fd.ok(t, storeCmds(t, "u2", newer, pattern(2, 100))...)
	fd.ok(t, storeCmds(t, "u3", other, pattern(3, 100))...)
	if got := current(); got != newer {
		t.Fatalf("alias after two commits: %q, want %s", got, newer)
	}
	fd.ok(t, storeCmds(t, "u4", older, pattern(4, 100))...)
	if got := current(); got != older {
		t.Fatalf("alias after %s was stored again: %q", older, got)
	}
	c, err := f.Open(mustKey(t, alias))
	if err != nil {
		t.Fatal(err)
	}
	if c.Artifact.Digest != digestOf(pattern(4, 100)) {
		t.Fatalf("alias opens %s, want the content stored last", c.Artifact.Digest)
	}
	c.Close()

	fd.ok(t, EncodeDeleteArtifacts([]string{newer}))
	if got := current(); got != older {
		t.Fatalf("deleting a superseded artifact moved the alias to %q", got)
	}
	fd.ok(t, EncodeDeleteArtifacts([]string{older}))
	if got := current(); got != "" {
		t.Fatalf("alias of an object without artifacts names %q", got)
	}
	if a, err := f.Artifact(mustKey(t, "ocirepository/default/other/latest.tar.gz")); err != nil || a.Path() != other {
		t.Fatalf("another object's alias: %+v, %v", a, err)
	}
}
