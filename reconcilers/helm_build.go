package reconcilers

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/Masterminds/semver/v3"
	"github.com/fluxcd/pkg/runtime/transform"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"sigs.k8s.io/yaml"

	"github.com/sourceraft/sourceraft/archive"
)

// Reasons of chart build failures, Flux's.
const (
	// HelmChartReferenceReason: spec.chart does not name a loadable chart.
	HelmChartReferenceReason = "InvalidChartReference"
	// HelmChartPullReason: the chart or its repository index could not be fetched.
	HelmChartPullReason = "ChartPullError"
	// HelmMetadataPatchReason: the chart version cannot take build metadata.
	HelmMetadataPatchReason = "MetadataPatchError"
	// HelmValuesFilesReason: spec.valuesFiles could not be merged.
	HelmValuesFilesReason = "ValuesFilesError"
	// HelmDependencyBuildReason: the chart's dependencies are missing.
	HelmDependencyBuildReason = "DependencyBuildError"
	// HelmChartPackageReason: the chart could not be loaded or packaged.
	HelmChartPackageReason = "ChartPackageError"
)

// helmBuildError is a failed chart build. Fetch failures set FetchFailed,
// build failures BuildFailed; stalling ones wait for a change of the
// HelmChart or of its source.
type helmBuildError struct {
	Reason string
	Err    error
}

func (e *helmBuildError) Error() string {
	return e.Err.Error()
}

func (e *helmBuildError) Unwrap() error { return e.Err }

// condition is the negative condition the failure sets.
func (e *helmBuildError) condition() string {
	switch e.Reason {
	case HelmMetadataPatchReason, HelmValuesFilesReason, HelmDependencyBuildReason, HelmChartPackageReason:
		return sourcev1.BuildFailedCondition
	}
	return sourcev1.FetchFailedCondition
}

// stalls reports whether retrying the same inputs cannot help.
func (e *helmBuildError) stalls() bool {
	switch e.Reason {
	case HelmChartReferenceReason, HelmMetadataPatchReason, HelmValuesFilesReason, HelmDependencyBuildReason:
		return true
	}
	return false
}

func helmBuildErr(reason string, format string, args ...any) *helmBuildError {
	return &helmBuildError{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// helmBuild is the outcome of a chart build.
type helmBuild struct {
	Name    string
	Version string
	// Path is the chart package to store; empty when UpToDate.
	Path string
	// UpToDate is set when the stored artifact already is this build.
	UpToDate bool
	// Packaged is set when the chart was (re)packaged rather than pulled
	// as published.
	Packaged bool
	// ValuesFiles are the values files merged into the chart.
	ValuesFiles []string
}

func (b *helmBuild) complete() bool { return b != nil && (b.UpToDate || b.Path != "") }

func (b *helmBuild) hasMetadata() bool { return b != nil && b.Name != "" && b.Version != "" }

// reason is the condition and event reason of a complete build.
func (b *helmBuild) reason() string {
	if b.Packaged {
		return sourcev1.ChartPackageSucceededReason
	}
	return sourcev1.ChartPullSucceededReason
}

// summary describes the build the way Flux's messages do.
func (b *helmBuild) summary() string {
	if !b.hasMetadata() {
		return "no chart build"
	}
	action := "pulled"
	if b.Packaged {
		action = "packaged"
	}
	s := fmt.Sprintf("%s '%s' chart with version '%s'", action, b.Name, b.Version)
	if b.Packaged && len(b.ValuesFiles) > 0 {
		s += fmt.Sprintf(" and merged values files %v", b.ValuesFiles)
	}
	return s
}

// helmVersionWithMetadata sets SemVer build metadata on a chart version,
// replacing any it had, as Flux does for reconcileStrategy Revision and
// for values files.
func helmVersionWithMetadata(version, metadata string) (string, error) {
	if metadata == "" {
		return version, nil
	}
	v, err := semver.NewVersion(version)
	if err != nil {
		return "", helmBuildErr(HelmMetadataPatchReason, "failed to parse version from chart metadata as SemVer: %w", err)
	}
	nv, err := v.SetMetadata(metadata)
	if err != nil {
		return "", helmBuildErr(HelmMetadataPatchReason, "failed to set SemVer metadata on chart version: %w", err)
	}
	return nv.String(), nil
}

// helmMergeValues merges values files in order, later files overriding
// earlier ones key by key. read returns a file's content or an error
// matching fs.ErrNotExist. It returns the merged values and the files that
// took part.
func helmMergeValues(paths []string, ignoreMissing bool, read func(p string) ([]byte, error)) (map[string]any, []string, error) {
	merged := map[string]any{}
	used := make([]string, 0, len(paths))
	for _, p := range paths {
		b, err := read(p)
		if err != nil {
			if ignoreMissing && errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if errors.Is(err, fs.ErrNotExist) {
				return nil, nil, fmt.Errorf("no values file found at path '%s'", p)
			}
			return nil, nil, fmt.Errorf("could not read values from file '%s': %w", p, err)
		}
		values := map[string]any{}
		if err := yaml.Unmarshal(b, &values); err != nil {
			return nil, nil, fmt.Errorf("unmarshaling values from '%s' failed: %w", p, err)
		}
		merged = transform.MergeMaps(merged, values)
		used = append(used, p)
	}
	return merged, used, nil
}

// helmChartFileReader reads values files from a loaded chart: values.yaml
// is the chart's default values, anything else one of its files.
func helmChartFileReader(ch *chart.Chart) func(string) ([]byte, error) {
	return func(p string) ([]byte, error) {
		name := filepath.ToSlash(filepath.Clean(p))
		if name == chartutil.ValuesfileName {
			for _, f := range ch.Raw {
				if f.Name == chartutil.ValuesfileName {
					return f.Data, nil
				}
			}
		}
		for _, f := range ch.Files {
			if f.Name == name {
				return f.Data, nil
			}
		}
		return nil, fmt.Errorf("%s: %w", p, fs.ErrNotExist)
	}
}

// helmRootReader reads values files relative to a source tree; a path
// leaving the tree is refused by the os.Root.
func helmRootReader(root *os.Root) func(string) ([]byte, error) {
	return func(p string) ([]byte, error) {
		rel := strings.TrimPrefix(filepath.Clean("/"+p), "/")
		fi, err := root.Stat(rel)
		if err != nil {
			return nil, err
		}
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("%s is not a regular file: %w", p, fs.ErrNotExist)
		}
		return root.ReadFile(rel)
	}
}

// helmSetValues replaces the chart's default values with merged.
func helmSetValues(ch *chart.Chart, merged map[string]any) error {
	data, err := yaml.Marshal(merged)
	if err != nil {
		return err
	}
	ch.Values = merged
	for _, f := range ch.Raw {
		if f.Name == chartutil.ValuesfileName {
			f.Data = data
			return nil
		}
	}
	ch.Raw = append(ch.Raw, &chart.File{Name: chartutil.ValuesfileName, Data: data})
	return nil
}

// helmAddLocalDependencies loads the chart's missing file:// dependencies
// from the source tree, as Flux's dependency manager does for local
// paths. Dependencies in remote repositories must be vendored under
// charts/: sourceraft does not download them.
func helmAddLocalDependencies(ch *chart.Chart, chartDir, sourceDir string) error {
	if ch.Metadata.Dependencies == nil || action.CheckDependencies(ch, ch.Metadata.Dependencies) == nil {
		return nil
	}
	have := map[string]bool{}
	for _, d := range ch.Dependencies() {
		have[d.Name()] = true
	}
	var missing []string
	for _, dep := range ch.Metadata.Dependencies {
		if have[dep.Name] {
			continue
		}
		rel, ok := strings.CutPrefix(dep.Repository, "file://")
		if !ok {
			missing = append(missing, fmt.Sprintf("'%s' from '%s'", dep.Name, dep.Repository))
			continue
		}
		p := filepath.Clean(filepath.Join(chartDir, rel))
		if r, err := filepath.Rel(sourceDir, p); err != nil || !filepath.IsLocal(r) {
			return fmt.Errorf("dependency '%s' at '%s' is outside the source", dep.Name, dep.Repository)
		}
		sub, err := loader.Load(p)
		if err != nil {
			return fmt.Errorf("failed to load dependency '%s' from '%s': %w", dep.Name, dep.Repository, err)
		}
		ch.AddDependency(sub)
		have[dep.Name] = true
	}
	if len(missing) > 0 {
		return fmt.Errorf("chart dependencies %s are not vendored under charts/ and sourceraft does not download them yet",
			strings.Join(missing, ", "))
	}
	return nil
}

// helmPackage writes ch as the deterministic tar.gz <name>-<version>.tgz
// in dir and returns its path: Helm's chartutil.SaveDir lays the chart
// out, subcharts as directories under charts/, and package archive packs
// it with fixed times and modes, so packaging the same chart twice gives
// the same digest and consumers see no spurious new artifact.
func helmPackage(ch *chart.Chart, dir string) (string, error) {
	tree, err := os.MkdirTemp(dir, "chart-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tree)
	if err := helmSaveDir(ch, tree); err != nil {
		return "", err
	}
	out := filepath.Join(dir, ch.Name()+"-"+ch.Metadata.Version+".tgz")
	f, err := os.Create(out)
	if err != nil {
		return "", err
	}
	_, err = archive.Write(tree, f, archive.Options{})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return out, err
}

// helmSaveDir is chartutil.SaveDir with the subcharts saved as
// directories instead of tar.gz files stamped with the current time.
func helmSaveDir(ch *chart.Chart, dest string) error {
	deps := ch.Dependencies()
	ch.SetDependencies()
	err := chartutil.SaveDir(ch, dest)
	ch.SetDependencies(deps...)
	if err != nil {
		return err
	}
	base := filepath.Join(dest, ch.Name())
	if ch.Lock != nil && ch.Metadata.APIVersion == chart.APIVersionV2 {
		data, err := yaml.Marshal(ch.Lock)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(base, "Chart.lock"), data, 0o644); err != nil {
			return err
		}
	}
	for _, d := range deps {
		if err := helmSaveDir(d, filepath.Join(base, chartutil.ChartsDir)); err != nil {
			return err
		}
	}
	return nil
}
