package bucket

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"cloud.google.com/go/storage"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"
)

// GCSOptions say how to reach Google Cloud Storage. As in Flux, there is
// no endpoint: the client talks to Google's (storage.googleapis.com).
type GCSOptions struct {
	// ServiceAccountKey is a Google service account key (JSON), Flux's
	// secret field 'serviceaccount'; without it Tokens authenticate.
	ServiceAccountKey []byte
	// Tokens issues the access tokens when ServiceAccountKey is empty
	// (fluxcd/pkg/auth's gcp provider).
	Tokens oauth2.TokenSource
	// Proxy, when set, carries every request (the key's token exchange
	// too) instead of the environment's proxy.
	Proxy *url.URL
}

// GCS is a Client for Google Cloud Storage (its JSON API, objects read
// through the XML API as cloud.google.com/go/storage does).
type GCS struct {
	client *storage.Client
}

// NewGCS builds the client o describes. ctx carries the token requests
// of a service account key for the client's lifetime.
func NewGCS(ctx context.Context, o GCSOptions) (*GCS, error) {
	base := http.DefaultTransport.(*http.Transport).Clone()
	if o.Proxy != nil {
		base.Proxy = http.ProxyURL(o.Proxy)
	}
	tokens := o.Tokens
	if len(o.ServiceAccountKey) > 0 {
		// The key's own token endpoint is reached through the same proxy.
		ctx = context.WithValue(ctx, oauth2.HTTPClient, &http.Client{Transport: base})
		creds, err := google.CredentialsFromJSONWithType(ctx, o.ServiceAccountKey, google.ServiceAccount, storage.ScopeReadOnly)
		if err != nil {
			return nil, fmt.Errorf("failed to create Google credentials from secret: %w", err)
		}
		tokens = creds.TokenSource
	}
	if tokens == nil {
		return nil, errors.New("no Google credentials: neither a service account key nor a token source")
	}
	hc := &http.Client{Transport: &oauth2.Transport{Source: oauth2.ReuseTokenSource(nil, tokens), Base: base}}
	c, err := storage.NewClient(ctx, option.WithHTTPClient(hc))
	if err != nil {
		return nil, fmt.Errorf("failed to create the GCS client: %w", err)
	}
	return &GCS{client: c}, nil
}

// Close releases the client's connections.
func (c *GCS) Close() error { return c.client.Close() }

func (c *GCS) BucketExists(ctx context.Context, bucket string) (bool, error) {
	_, err := c.client.Bucket(bucket).Attrs(ctx)
	if errors.Is(err, storage.ErrBucketNotExist) {
		return false, nil
	}
	return err == nil, err
}

func (c *GCS) ListObjects(ctx context.Context, bucket, prefix string, visit func(Object) error) error {
	it := c.client.Bucket(bucket).Objects(ctx, &storage.Query{Prefix: prefix})
	for {
		o, err := it.Next()
		if errors.Is(err, iterator.Done) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("listing objects from bucket '%s' failed: %w", bucket, err)
		}
		if err := visit(Object{Key: o.Name, ETag: o.Etag, Size: o.Size}); err != nil {
			return err
		}
	}
}

// GetObject reads the generation whose attributes (and ETag) it got
// first, as Flux does, so the ETag is that of the bytes served even when
// the object is replaced meanwhile.
func (c *GCS) GetObject(ctx context.Context, bucket, key string) (io.ReadCloser, string, error) {
	obj := c.client.Bucket(bucket).Object(key)
	attrs, err := obj.Attrs(ctx)
	if err != nil {
		return nil, "", err
	}
	r, err := obj.If(storage.Conditions{GenerationMatch: attrs.Generation}).NewReader(ctx)
	if err != nil {
		return nil, "", err
	}
	return r, attrs.Etag, nil
}

func (c *GCS) IsNotFound(err error) bool {
	return errors.Is(err, storage.ErrObjectNotExist)
}
