package raftstore

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sourceraft/sourceraft/storage"
)

// TestScrubFindsCorruptBlobFiles corrupts a follower's blob file and lets
// the scrub, at a bounded rate, find it without any download.
func TestScrubFindsCorruptBlobFiles(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	_, l := tc.leader()
	content := randomBytes(9, 2*storage.MaxChunkSize)
	a := art("app", "scrub.tar.gz")
	if err := l.Store(context.Background(), &a, bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	tc.converge()
	var victim *Node
	for _, nd := range tc.nodes {
		if nd != l {
			victim = nd
			break
		}
	}
	name := filepath.Join(victim.cfg.Dir, "blobs", "sha256", strings.TrimPrefix(a.Digest, "sha256:"))
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatal(err)
	}
	found := make(chan string, 1)
	victim.OnCorrupt(func(d string) { found <- d })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go victim.Scrub(ctx, 4<<20)
	select {
	case d := <-found:
		if d != a.Digest {
			t.Fatalf("scrub reported %s, want %s", d, a.Digest)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("scrub found nothing: %+v", victim.Status().Integrity)
	}
	if st := victim.Status().Integrity; st.Corrupt != 1 {
		t.Fatalf("integrity %+v", st)
	}
	if err := victim.RepairBlob(a.Digest, a.Size, bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, victim, a); !bytes.Equal(got, content) {
		t.Fatal("repaired blob differs")
	}
}
