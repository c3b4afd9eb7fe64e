package oci

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/fluxcd/pkg/tar"
	gcrv1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/sourceraft/sourceraft/archive"
)

// Pulled is what a pull fetched: the manifest's annotations and the
// digest of the selected layer.
type Pulled struct {
	Annotations map[string]string
	LayerDigest string
}

// Limits bound what a pull may write: the compressed layer, and for
// extraction the uncompressed bytes and the number of entries; zero or
// less is unbounded.
type Limits struct {
	Layer   int64
	Untar   int64
	Entries int
}

// PullOptions say which layer to pull and where it goes.
type PullOptions struct {
	// MediaType selects the first layer of this media type; empty is the
	// first layer, as in Flux.
	MediaType string
	// Copy writes the compressed layer as it is to File; otherwise the
	// layer, a tar.gz, is extracted into Dir.
	Copy bool
	Dir  string
	File string
	Limits
}

// untarLimitMessage is how fluxcd/pkg/tar reports its size limit, which it
// does not type; oci_test.go pins it.
const untarLimitMessage = "is bigger than max archive size"

// Pull fetches the manifest of ref by digest, selects the layer and
// either extracts it or copies it as o says. A layer over a limit fails
// with an *archive.LimitError before anything is written when the
// manifest already says so, or as soon as the limit is crossed
// otherwise; a manifest without the layer, or a layer that cannot be
// extracted, with ErrLayer.
func (c *Client) Pull(ref *Resolved, o PullOptions) (*Pulled, error) {
	lim := o.Limits
	img, err := remote.Image(ref.repo.Digest(ref.Digest), c.opts...)
	if err != nil {
		return nil, err
	}
	manifest, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("%w: failed to parse artifact manifest: %w", ErrLayer, err)
	}
	layer, err := selectLayer(img, o.MediaType)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrLayer, err)
	}
	digest, err := layer.Digest()
	if err != nil {
		return nil, fmt.Errorf("%w: failed to determine the layer digest: %w", ErrLayer, err)
	}
	size, err := layer.Size()
	if err != nil {
		return nil, fmt.Errorf("%w: failed to determine the layer size: %w", ErrLayer, err)
	}
	if lim.Layer > 0 && size > lim.Layer {
		return nil, fmt.Errorf("layer %s is %d bytes compressed: %w", digest, size,
			&archive.LimitError{Limit: archive.LimitSize, Max: lim.Layer, Actual: size})
	}
	rc, err := layer.Compressed()
	if err != nil {
		return nil, fmt.Errorf("failed to fetch layer %s: %w", digest, err)
	}
	defer rc.Close()
	lr := &limitReader{r: rc, left: lim.Layer, max: lim.Layer}
	if lim.Layer <= 0 {
		lr.left = -1
	}

	if o.Copy {
		err = copyLayer(lr, o.File)
	} else {
		err = extractLayer(lr, o.Dir, lim)
	}
	if lr.err != nil {
		return nil, fmt.Errorf("layer %s: %w", digest, lr.err)
	}
	if err != nil {
		return nil, err
	}
	return &Pulled{Annotations: manifest.Annotations, LayerDigest: digest.String()}, nil
}

// selectLayer returns the first layer of mediaType, or the first layer
// when mediaType is empty, as Flux does.
func selectLayer(img gcrv1.Image, mediaType string) (gcrv1.Layer, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("failed to parse artifact layers: %w", err)
	}
	if len(layers) == 0 {
		return nil, errors.New("no layers found in artifact")
	}
	if mediaType == "" {
		return layers[0], nil
	}
	for i, l := range layers {
		mt, err := l.MediaType()
		if err != nil {
			return nil, fmt.Errorf("failed to determine the media type of layer[%d] from artifact: %w", i, err)
		}
		if string(mt) == mediaType {
			return l, nil
		}
	}
	return nil, fmt.Errorf("failed to find layer with media type '%s' in artifact", mediaType)
}

// extractLayer extracts a tar.gz layer into dir with fluxcd/pkg/tar,
// dropping symlinks, within the uncompressed size and entry limits and
// archive.MaxEntryDepth, then drains the stream so the layer digest is verified.
func extractLayer(r io.Reader, dir string, lim Limits) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	maxSize := tar.UnlimitedUntarSize
	if lim.Untar > 0 {
		maxSize = int(lim.Untar)
	}
	var (
		entries  int
		entryErr error
	)
	err := tar.Untar(r, dir, tar.WithMaxUntarSize(maxSize), tar.WithSkipSymlinks(),
		tar.WithFilter(func(name string, _ os.FileInfo) bool {
			entries++
			if lim.Entries > 0 && entries > lim.Entries {
				entryErr = &archive.LimitError{Limit: archive.LimitEntries, Max: int64(lim.Entries), Actual: int64(entries)}
			}
			if depth := strings.Count(strings.Trim(path.Clean("/"+name), "/"), "/"); entryErr == nil && depth > archive.MaxEntryDepth {
				entryErr = &archive.LimitError{Limit: archive.LimitDepth, Max: archive.MaxEntryDepth, Actual: int64(depth)}
			}
			// Once over the limit nothing more is written.
			return entryErr != nil
		}))
	switch {
	case err != nil && strings.Contains(err.Error(), untarLimitMessage):
		return fmt.Errorf("%s: %w", err, &archive.LimitError{Limit: archive.LimitSize, Max: lim.Untar, Actual: lim.Untar + 1})
	case err != nil:
		return fmt.Errorf("%w: failed to extract layer contents from artifact: %w", ErrLayer, err)
	case entryErr != nil:
		return entryErr
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		return fmt.Errorf("failed to read layer from artifact: %w", err)
	}
	return nil
}

// copyLayer writes the compressed layer as it is into path.
func copyLayer(r io.Reader, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("%w: failed to create file to copy layer to: %w", ErrLayer, err)
	}
	_, err = io.Copy(f, r)
	if err = errors.Join(err, f.Close()); err != nil {
		return fmt.Errorf("failed to copy layer from artifact: %w", err)
	}
	return nil
}

// limitReader fails with an *archive.LimitError once more than max
// bytes were read; left < 0 is unbounded.
type limitReader struct {
	r         io.Reader
	left, max int64
	err       error
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.err != nil {
		return 0, l.err
	}
	if l.left >= 0 && int64(len(p)) > l.left+1 {
		p = p[:l.left+1]
	}
	n, err := l.r.Read(p)
	if l.left >= 0 {
		if int64(n) > l.left {
			l.err = &archive.LimitError{Limit: archive.LimitSize, Max: l.max, Actual: l.max + 1}
			return 0, l.err
		}
		l.left -= int64(n)
	}
	return n, err
}
