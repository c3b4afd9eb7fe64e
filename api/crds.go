package api

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io"
	"path"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// The manifests are embedded so tests and the envtest helper install exactly
// what `make crds` generated, with no path to the source tree at run time.
//
//go:embed crds/*.yaml
var crdFiles embed.FS

// CRDs decodes the embedded CustomResourceDefinitions, in file-name order.
// Every document in crds/ must be a CRD: anything else is an error, so a
// stray file cannot be silently ignored.
func CRDs() ([]*apiextensionsv1.CustomResourceDefinition, error) {
	entries, err := crdFiles.ReadDir("crds")
	if err != nil {
		return nil, err
	}
	var out []*apiextensionsv1.CustomResourceDefinition
	for _, e := range entries {
		name := path.Join("crds", e.Name())
		data, err := crdFiles.ReadFile(name)
		if err != nil {
			return nil, err
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			crd := &apiextensionsv1.CustomResourceDefinition{}
			if err := dec.Decode(crd); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			// A "---" separator with nothing after it decodes as an empty object.
			if crd.Kind == "" && crd.Name == "" {
				continue
			}
			if crd.APIVersion != apiextensionsv1.SchemeGroupVersion.String() || crd.Kind != "CustomResourceDefinition" {
				return nil, fmt.Errorf("%s: %s %s is not an apiextensions.k8s.io/v1 CustomResourceDefinition", name, crd.APIVersion, crd.Kind)
			}
			out = append(out, crd)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("api: no CRDs embedded; run make crds")
	}
	return out, nil
}
