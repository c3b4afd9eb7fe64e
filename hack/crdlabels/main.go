// Command crdlabels adds labels to the CustomResourceDefinitions controller-gen
// wrote into a directory, one CRD per file (`make crds`, `make verify-crds`).
//
// controller-gen takes CRD labels only from markers on the API types, and the
// types are Flux's (github.com/fluxcd/source-controller/api), so the labels
// Flux's own install puts on its CRDs, which the Flux CLI selects by (`flux
// check`, `flux uninstall`, `flux version`), are added here after generation.
// A file is decoded and encoded with sigs.k8s.io/yaml, as controller-gen
// writes it, so the only change to a generated file is the labels; running it
// twice changes nothing.
//
//	go run ./hack/crdlabels -dir api/crds app.kubernetes.io/part-of=flux
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"
)

func main() {
	dir := flag.String("dir", "", "directory of the generated CRDs (*.yaml)")
	flag.Parse()
	if err := run(*dir, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "crdlabels:", err)
		os.Exit(1)
	}
}

func run(dir string, args []string) error {
	if dir == "" || len(args) == 0 {
		return errors.New("usage: crdlabels -dir <dir> key=value [key=value]")
	}
	labels := map[string]any{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return fmt.Errorf("label %q: want key=value", a)
		}
		labels[k] = v
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return fmt.Errorf("no *.yaml in %s", dir)
	}
	for _, f := range files {
		if err := label(f, labels); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
	}
	return nil
}

// docStart is how controller-gen begins every file it writes.
const docStart = "---\n"

func label(file string, labels map[string]any) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	body := bytes.TrimPrefix(data, []byte(docStart))
	// sigs.k8s.io/yaml decodes only the first document: refuse a file with
	// more rather than drop the rest.
	if bytes.Contains(body, []byte("\n"+docStart)) {
		return errors.New("more than one YAML document")
	}
	var obj map[string]any
	if err := yaml.Unmarshal(body, &obj); err != nil {
		return err
	}
	if obj["apiVersion"] != "apiextensions.k8s.io/v1" || obj["kind"] != "CustomResourceDefinition" {
		return fmt.Errorf("%v %v is not an apiextensions.k8s.io/v1 CustomResourceDefinition", obj["apiVersion"], obj["kind"])
	}
	meta, ok := obj["metadata"].(map[string]any)
	if !ok {
		return errors.New("no metadata")
	}
	have, _ := meta["labels"].(map[string]any)
	if have == nil {
		have = map[string]any{}
	}
	maps.Copy(have, labels)
	meta["labels"] = have
	out, err := yaml.Marshal(obj)
	if err != nil {
		return err
	}
	out = append([]byte(docStart), out...)
	if bytes.Equal(out, data) {
		return nil
	}
	return os.WriteFile(file, out, 0o644)
}
