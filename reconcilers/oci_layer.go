package reconcilers

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/fluxcd/pkg/tar"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	gcrv1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/sourceraft/sourceraft/archive"
)

// ociPulled is the fetched artifact: its resolved reference, manifest
// annotations and the digest of the selected layer.
type ociPulled struct {
	ref         ociRef
	annotations map[string]string
	layerDigest string
}

// ociLimits bound what a pull may write: the compressed layer, and for
// extraction the uncompressed bytes and the number of entries (zero or
// less is unbounded for the last two).
type ociLimits struct {
	layer   int64
	untar   int64
	entries int
}

// untarLimitMessage is how fluxcd/pkg/tar reports its size limit, which it
// does not type; oci_test.go pins it.
const untarLimitMessage = "is bigger than max archive size"

// pull fetches the manifest of ref by digest, selects the layer and either
// extracts it into the state's content directory or copies it into the
// state's layer file. A layer over a limit fails with an
// *archive.LimitError before anything is written when the manifest
// already says so, or as soon as the limit is crossed otherwise.
func (o *ociRemote) pull(ref ociRef, mediaType, operation string, st *ociState, lim ociLimits) (*ociPulled, error) {
	img, err := remote.Image(ref.repo.Digest(ref.digest.String()), o.opts...)
	if err != nil {
		return nil, err
	}
	manifest, err := img.Manifest()
	if err != nil {
		return nil, NewGeneric(fmt.Errorf("failed to parse artifact manifest: %w", err), sourcev1.OCILayerOperationFailedReason)
	}
	layer, err := selectOCILayer(img, mediaType)
	if err != nil {
		return nil, NewGeneric(err, sourcev1.OCILayerOperationFailedReason)
	}
	digest, err := layer.Digest()
	if err != nil {
		return nil, NewGeneric(fmt.Errorf("failed to determine the layer digest: %w", err), sourcev1.OCILayerOperationFailedReason)
	}
	size, err := layer.Size()
	if err != nil {
		return nil, NewGeneric(fmt.Errorf("failed to determine the layer size: %w", err), sourcev1.OCILayerOperationFailedReason)
	}
	if lim.layer > 0 && size > lim.layer {
		return nil, fmt.Errorf("layer %s is %d bytes compressed: %w", digest, size,
			&archive.LimitError{Limit: archive.LimitSize, Max: lim.layer, Actual: size})
	}
	rc, err := layer.Compressed()
	if err != nil {
		return nil, fmt.Errorf("failed to fetch layer %s: %w", digest, err)
	}
	defer rc.Close()
	lr := &ociLimitReader{r: rc, left: lim.layer, max: lim.layer}
	if lim.layer <= 0 {
		lr.left = -1
	}

	switch operation {
	case sourcev1.OCILayerCopy:
		err = copyOCILayer(lr, st.layerFile())
	default:
		err = extractOCILayer(lr, st.contentDir(), lim)
	}
	if lr.err != nil {
		return nil, fmt.Errorf("layer %s: %w", digest, lr.err)
	}
	if err != nil {
		return nil, err
	}
	return &ociPulled{ref: ref, annotations: manifest.Annotations, layerDigest: digest.String()}, nil
}

// selectOCILayer returns the first layer of mediaType, or the first layer
// when mediaType is empty, as Flux does.
func selectOCILayer(img gcrv1.Image, mediaType string) (gcrv1.Layer, error) {
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

// extractOCILayer extracts a tar.gz layer into dir with fluxcd/pkg/tar,
// dropping symlinks, within the uncompressed size and entry limits, then
// drains the stream so the layer digest is verified.
func extractOCILayer(r io.Reader, dir string, lim ociLimits) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return NewGeneric(err, sourcev1.DirCreationFailedReason)
	}
	maxSize := tar.UnlimitedUntarSize
	if lim.untar > 0 {
		maxSize = int(lim.untar)
	}
	var (
		entries  int
		entryErr error
	)
	err := tar.Untar(r, dir, tar.WithMaxUntarSize(maxSize), tar.WithSkipSymlinks(),
		tar.WithFilter(func(string, os.FileInfo) bool {
			entries++
			if lim.entries > 0 && entries > lim.entries {
				entryErr = &archive.LimitError{Limit: archive.LimitEntries, Max: int64(lim.entries), Actual: int64(entries)}
			}
			// Once over the limit nothing more is written.
			return entryErr != nil
		}))
	switch {
	case err != nil && strings.Contains(err.Error(), untarLimitMessage):
		return fmt.Errorf("%s: %w", err, &archive.LimitError{Limit: archive.LimitSize, Max: lim.untar, Actual: lim.untar + 1})
	case err != nil:
		return NewGeneric(fmt.Errorf("failed to extract layer contents from artifact: %w", err), sourcev1.OCILayerOperationFailedReason)
	case entryErr != nil:
		return entryErr
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		return NewGeneric(fmt.Errorf("failed to read layer from artifact: %w", err), sourcev1.OCIPullFailedReason)
	}
	return nil
}

// copyOCILayer writes the compressed layer as it is into path.
func copyOCILayer(r io.Reader, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return NewGeneric(fmt.Errorf("failed to create file to copy layer to: %w", err), sourcev1.OCILayerOperationFailedReason)
	}
	_, err = io.Copy(f, r)
	if err = errors.Join(err, f.Close()); err != nil {
		return NewGeneric(fmt.Errorf("failed to copy layer from artifact: %w", err), sourcev1.OCIPullFailedReason)
	}
	return nil
}

// ociLimitReader fails with an *archive.LimitError once more than max
// bytes were read; left < 0 is unbounded.
type ociLimitReader struct {
	r         io.Reader
	left, max int64
	err       error
}

func (l *ociLimitReader) Read(p []byte) (int, error) {
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
