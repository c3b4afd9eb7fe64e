package raftstore

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/sourceraft/sourceraft/storage"
)

// Store with a digest algorithm other than sha256 hashes the content once
// for both: the artifact reports the configured algorithm, the blob is at
// its sha256 address on every replica, and after the algorithm changes
// (every replica restarted with another) the same bytes share that blob.
func TestStoreDigestAlgorithm(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) { c.DigestAlgorithm = digest.BLAKE3 })
	_, l := tc.leader()
	ctx := context.Background()
	content := randomBytes(11, 2*storage.MaxChunkSize+5)
	blob := digest.SHA256.FromBytes(content).String()

	a := art("app", "a.tar.gz")
	if err := l.Store(ctx, &a, bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	if want := digest.BLAKE3.FromBytes(content).String(); a.Digest != want || a.BlobDigest != blob {
		t.Fatalf("stored digest %q, blob %q; want %q, %q", a.Digest, a.BlobDigest, want, blob)
	}
	tc.converge()
	for _, nd := range tc.nodes {
		got, err := nd.fsm.Artifact(mustKey(t, a))
		if err != nil || got.Digest != a.Digest || got.BlobDigest != blob {
			t.Fatalf("%s: %+v, %v", nd.cfg.NodeID, got, err)
		}
		if err := nd.fsm.Verify(blob); err != nil {
			t.Fatalf("%s: %v", nd.cfg.NodeID, err)
		}
		if !bytes.Equal(readAll(t, nd, a), content) {
			t.Fatalf("%s serves other bytes", nd.cfg.NodeID)
		}
	}

	// A preset digest is checked in its own algorithm, whichever it is.
	for _, preset := range []string{blob, a.Digest} {
		b := art("app", "preset.tar.gz")
		b.Digest = preset
		if err := l.Store(ctx, &b, bytes.NewReader(content)); err != nil || b.Digest != a.Digest {
			t.Fatalf("preset %s: stored %q, %v", preset, b.Digest, err)
		}
	}
	for _, preset := range []string{digest.SHA512.FromString("other").String(), "md5:d41d8cd98f00b204e9800998ecf8427e", "sha256:ABC"} {
		b := art("app", "bad.tar.gz")
		b.Digest = preset
		if err := l.Store(ctx, &b, bytes.NewReader(content)); !errors.Is(err, storage.ErrDigestMismatch) {
			t.Fatalf("preset %s: %v, want a digest mismatch", preset, err)
		}
		if ok, _ := l.Exists(ctx, b); ok {
			t.Fatalf("preset %s: committed", preset)
		}
	}

	for i := range tc.nodes {
		tc.stop(i)
		tc.cfgs[i].DigestAlgorithm = storage.SHA1
		tc.start(i)
	}
	_, l = tc.leader()
	c := art("app", "c.tar.gz")
	if err := l.Store(ctx, &c, bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	if want := storage.SHA1.FromBytes(content).String(); c.Digest != want || c.BlobDigest != blob {
		t.Fatalf("after the switch: digest %q, blob %q; want %q, %q", c.Digest, c.BlobDigest, want, blob)
	}
	tc.converge()
	st, err := l.fsm.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Artifacts != 3 || st.Blobs != 1 {
		t.Fatalf("%d artifacts in %d blobs, want 3 in 1", st.Artifacts, st.Blobs)
	}
}

// With the default algorithm nothing changes: the digest is sha256 and
// is the blob address, with no BlobDigest beside it.
func TestStoreDefaultDigest(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	_, l := tc.leader()
	a := art("app", "a.tar.gz")
	if err := l.Store(context.Background(), &a, strings.NewReader("abc")); err != nil {
		t.Fatal(err)
	}
	if a.Digest != digest.SHA256.FromString("abc").String() || a.BlobDigest != "" {
		t.Fatalf("digest %q, blob %q", a.Digest, a.BlobDigest)
	}
}

func TestConfigRefusesUnknownDigestAlgorithm(t *testing.T) {
	for _, algo := range []digest.Algorithm{"md5", "SHA256", "sha256 "} {
		cfg := Config{NodeID: "n", Dir: t.TempDir(), RaftBind: "127.0.0.1:0", Insecure: true, DigestAlgorithm: algo}
		cfg.setDefaults()
		if err := cfg.validate(); err == nil || !strings.Contains(err.Error(), "sha1, sha256, sha384, sha512, blake3") {
			t.Fatalf("%q: %v, want the accepted algorithms named", algo, err)
		}
	}
}
