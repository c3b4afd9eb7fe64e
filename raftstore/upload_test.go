package raftstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sourceraft/sourceraft/metrics"
	"github.com/sourceraft/sourceraft/storage"
)

// failAfter yields the first n bytes of data and then fails with err, the
// way an HTTP body cut short or an archive writer failing halfway does.
type failAfter struct {
	r   io.Reader
	err error
}

func newFailAfter(data []byte, n int, err error) *failAfter {
	return &failAfter{r: bytes.NewReader(data[:n]), err: err}
}

func (f *failAfter) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, f.err
	}
	return n, err
}

// TestContentEndingBadlyCommitsNothing: only a clean io.EOF at the
// declared length commits. io.ErrUnexpectedEOF is what net/http returns
// for a body cut short; io.ReadFull used to take it for a short last chunk
// and commit the truncated bytes over the previous artifact.
func TestContentEndingBadlyCommitsNothing(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	_, l := tc.leader()
	ctx := context.Background()
	prev := randomBytes(4, storage.MaxChunkSize+7)
	a := art("app", "a.tar.gz")
	if err := l.Store(ctx, &a, bytes.NewReader(prev)); err != nil {
		t.Fatal(err)
	}
	next := randomBytes(5, 3*storage.MaxChunkSize)
	cases := []struct {
		name    string
		content func() io.Reader
		size    int64
	}{
		{"body cut short, first chunk", func() io.Reader { return newFailAfter(next, 1000, io.ErrUnexpectedEOF) }, 0},
		{"body cut short, mid chunk", func() io.Reader { return newFailAfter(next, storage.MaxChunkSize+1000, io.ErrUnexpectedEOF) }, 0},
		{"body cut short at a chunk boundary", func() io.Reader { return newFailAfter(next, 2*storage.MaxChunkSize, io.ErrUnexpectedEOF) }, 0},
		{"wrapped EOF", func() io.Reader {
			return newFailAfter(next, storage.MaxChunkSize+1, fmt.Errorf("archive: %w", io.EOF))
		}, 0},
		{"producer failed through a pipe", func() io.Reader {
			pr, pw := io.Pipe()
			go func() {
				_, _ = pw.Write(next[:storage.MaxChunkSize+9])
				pw.CloseWithError(errors.New("archive: file changed size while being archived"))
			}()
			return pr
		}, 0},
		{"clean EOF short of the declared length", func() io.Reader { return bytes.NewReader(next[:len(next)-1]) }, int64(len(next))},
		{"clean EOF beyond the declared length", func() io.Reader { return bytes.NewReader(next) }, int64(len(next) - 1)},
	}
	for _, c := range cases {
		before := testutil.ToFloat64(metrics.UploadsAborted.WithLabelValues("incomplete"))
		b := art("app", "a.tar.gz")
		b.ExpectedSize = c.size
		err := l.Store(ctx, &b, c.content())
		if !errors.Is(err, storage.ErrIncomplete) {
			t.Errorf("%s: store returned %v, want ErrIncomplete", c.name, err)
		}
		if got := testutil.ToFloat64(metrics.UploadsAborted.WithLabelValues("incomplete")) - before; got != 1 {
			t.Errorf("%s: counted %v aborted uploads, want 1", c.name, got)
		}
	}
	tc.converge()
	for _, nd := range tc.nodes {
		if got := readAll(t, nd, a); !bytes.Equal(got, prev) {
			t.Fatalf("%s serves %d bytes, not the %d of the previous artifact", nd.cfg.NodeID, len(got), len(prev))
		}
		st, err := nd.fsm.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if st.Artifacts != 1 || st.Uploads != 0 || st.Blobs != 1 {
			t.Fatalf("%s after failed uploads: %+v, want 1 artifact, 1 blob, no uploads", nd.cfg.NodeID, st)
		}
	}
	// The declared length met exactly commits.
	b := art("app", "a.tar.gz")
	b.ExpectedSize = int64(len(next))
	if err := l.Store(ctx, &b, bytes.NewReader(next)); err != nil {
		t.Fatalf("store at the declared length: %v", err)
	}
	if got := readAll(t, l, b); !bytes.Equal(got, next) {
		t.Fatal("the complete upload is not what is served")
	}
}

func TestStoreRefusesInvalidIdentity(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	_, l := tc.leader()
	for _, a := range []storage.Artifact{
		{Kind: "foo", Namespace: "default", Name: "app", File: "a.tar.gz"},
		{Kind: "GitRepository", Namespace: "default", Name: "app", File: "a.tar.gz"},
		{Kind: "a:b", Namespace: "default", Name: "app", File: "a.tar.gz"},
		{Kind: "bucket", Namespace: "Default", Name: "app", File: "a.tar.gz"},
		{Kind: "bucket", Namespace: "a.b", Name: "app", File: "a.tar.gz"},
		{Kind: "bucket", Namespace: "default", Name: "app_1", File: "a.tar.gz"},
	} {
		err := l.Store(context.Background(), &a, bytes.NewReader([]byte("x")))
		if !errors.Is(err, storage.ErrInvalidPath) {
			t.Errorf("store %s: %v, want ErrInvalidPath", a.Path(), err)
		}
	}
	ok := storage.Artifact{Kind: "helmchart", Namespace: "flux-system", Name: "podinfo.v6", File: "podinfo-6.5.0+build.1.tgz"}
	if err := l.Store(context.Background(), &ok, bytes.NewReader([]byte("x"))); err != nil {
		t.Errorf("store %s: %v", ok.Path(), err)
	}
}
