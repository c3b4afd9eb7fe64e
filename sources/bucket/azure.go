package bucket

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
)

// AzureOptions say how to reach an Azure Blob Storage account.
type AzureOptions struct {
	// Endpoint is the account's blob service URL,
	// https://<account>.blob.core.windows.net.
	Endpoint string
	// Credential issues the Entra ID access tokens for Azure Storage.
	Credential azcore.TokenCredential
	// Proxy, when set, carries every request instead of the
	// environment's proxy.
	Proxy *url.URL
}

// Azure is a Client for Azure Blob Storage: a bucket is a container.
type Azure struct {
	client *azblob.Client
}

// NewAzure builds the client o describes.
func NewAzure(o AzureOptions) (*Azure, error) {
	opts := &azblob.ClientOptions{}
	if o.Proxy != nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.Proxy = http.ProxyURL(o.Proxy)
		opts.Transport = &http.Client{Transport: tr}
	}
	c, err := azblob.NewClient(o.Endpoint, o.Credential, opts)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidEndpoint, err)
	}
	return &Azure{client: c}, nil
}

// BucketExists lists at most one blob of the container, as Flux does:
// reading needs no other permission.
func (c *Azure) BucketExists(ctx context.Context, bucket string) (bool, error) {
	_, err := c.client.NewListBlobsFlatPager(bucket, &azblob.ListBlobsFlatOptions{MaxResults: to.Ptr(int32(1))}).NextPage(ctx)
	switch {
	case err == nil:
		return true, nil
	case bloberror.HasCode(err, bloberror.ContainerNotFound):
		return false, nil
	case bloberror.HasCode(err, bloberror.AuthenticationFailed):
		return false, fmt.Errorf("the specified bucket name may be incorrect, nonexistent, or the caller might lack sufficient permissions to access it: %w", err)
	}
	return false, err
}

func (c *Azure) ListObjects(ctx context.Context, bucket, prefix string, visit func(Object) error) error {
	opts := &azblob.ListBlobsFlatOptions{}
	if prefix != "" {
		opts.Prefix = &prefix
	}
	pager := c.client.NewListBlobsFlatPager(bucket, opts)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("listing objects from bucket '%s' failed: %w", bucket, err)
		}
		for _, b := range page.Segment.BlobItems {
			if b.Name == nil || b.Properties == nil {
				continue
			}
			o := Object{Key: *b.Name}
			if b.Properties.ETag != nil {
				o.ETag = headerETag(string(*b.Properties.ETag))
			}
			if b.Properties.ContentLength != nil {
				o.Size = *b.Properties.ContentLength
			}
			if err := visit(o); err != nil {
				return err
			}
		}
	}
	return nil
}

// headerETag is a listed ETag in the quoted form Get Blob's ETag header
// has. Flux's revision ends up made of the downloaded ETags (the
// header's); listing them alike keeps an unchanged container's revision
// unchanged without a download.
func headerETag(etag string) string {
	if strings.HasPrefix(etag, `"`) {
		return etag
	}
	return `"` + etag + `"`
}

func (c *Azure) GetObject(ctx context.Context, bucket, key string) (io.ReadCloser, string, error) {
	res, err := c.client.DownloadStream(ctx, bucket, key, nil)
	if err != nil {
		return nil, "", err
	}
	var etag string
	if res.ETag != nil {
		etag = string(*res.ETag)
	}
	return res.Body, etag, nil
}

func (c *Azure) IsNotFound(err error) bool {
	return bloberror.HasCode(err, bloberror.BlobNotFound)
}
