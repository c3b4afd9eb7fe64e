package main

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/sourceraft/sourceraft/raftstore"
	"github.com/sourceraft/sourceraft/s3store"
)

// blobFlags choose where blob bytes rest (--storage-backend).
type blobFlags struct {
	backend   string
	s3        s3store.Config
	cacheSize string
	presign   time.Duration
}

func (b *blobFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&b.backend, "storage-backend", "raft", "Where blob bytes rest: raft (files on every replica, replicated through the Raft log) or s3 (an S3-compatible bucket; metadata, GC and leadership stay in Raft).")
	fs.StringVar(&b.s3.Endpoint, "s3-endpoint", "", "With --storage-backend=s3: the bucket's host:port (TLS unless --s3-insecure).")
	fs.StringVar(&b.s3.Bucket, "s3-bucket", "", "With --storage-backend=s3: an existing bucket.")
	fs.StringVar(&b.s3.Region, "s3-region", "", "With --storage-backend=s3: the bucket's region.")
	fs.StringVar(&b.s3.Prefix, "s3-prefix", "", "With --storage-backend=s3: a prefix for every object key.")
	fs.BoolVar(&b.s3.Insecure, "s3-insecure", false, "With --storage-backend=s3: plain HTTP to the endpoint.")
	fs.StringVar(&b.s3.CAFile, "s3-ca-file", "", "With --storage-backend=s3: PEM CA certificates trusted for the endpoint, beside the system's.")
	fs.BoolVar(&b.s3.PathStyle, "s3-path-style", false, "With --storage-backend=s3: path-style requests (endpoint/bucket/key) instead of virtual-host style.")
	fs.StringVar(&b.s3.CredentialsFile, "s3-credentials-file", "", "With --storage-backend=s3: an AWS shared credentials file (a mounted Secret); empty reads AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.")
	fs.StringVar(&b.s3.SSE, "s3-sse", "", "With --storage-backend=s3: server-side encryption of stored objects: s3 (SSE-S3) or kms:<key-id> (SSE-KMS); empty: the bucket's default.")
	fs.StringVar(&b.cacheSize, "s3-cache-size", "5Gi", "With --storage-backend=s3: bytes of the local read cache under --storage-path (a quantity: 5Gi).")
	fs.DurationVar(&b.presign, "storage-presign", 0, "With --storage-backend=s3: answer downloads with a redirect to a URL pre-signed for this long (15m) instead of streaming through the cache; 0 streams.")
}

// open returns the object store the flags name, nil for the raft
// backend. A bucket that is missing or refuses the credentials stops the
// start with the store's message.
func (b *blobFlags) open(ctx context.Context, storagePath string) (raftstore.BlobStore, error) {
	switch b.backend {
	case "raft":
		if b.presign != 0 {
			return nil, fmt.Errorf("--storage-presign needs --storage-backend=s3")
		}
		return nil, nil
	case "s3":
	default:
		return nil, fmt.Errorf("--storage-backend=%q: want raft or s3", b.backend)
	}
	if b.presign < 0 {
		return nil, fmt.Errorf("--storage-presign=%s: want 0 or a positive duration", b.presign)
	}
	q, err := resource.ParseQuantity(b.cacheSize)
	if err != nil || q.Sign() < 0 {
		return nil, fmt.Errorf("--s3-cache-size=%q: want a non-negative quantity such as 5Gi", b.cacheSize)
	}
	cfg := b.s3
	cfg.CacheSize = q.Value()
	cfg.CacheDir = filepath.Join(storagePath, "s3-cache")
	s, err := s3store.New(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("--storage-backend=s3: %w", err)
	}
	return s, nil
}
