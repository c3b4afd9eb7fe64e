package helm

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/Masterminds/semver/v3"
	"github.com/fluxcd/pkg/runtime/transform"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/repo"
	"sigs.k8s.io/yaml"

	"github.com/sourceraft/sourceraft/archive"
	"github.com/sourceraft/sourceraft/sources/oci/verify"
)

// BuildErrorReason says what part of a chart build failed; its values
// are Flux's reasons for them.
type BuildErrorReason string

// The reasons of chart build failures, Flux's.
const (
	// ReasonChartReference: the chart path does not name a loadable chart.
	ReasonChartReference BuildErrorReason = "InvalidChartReference"
	// ReasonChartPull: the chart or its repository index could not be fetched.
	ReasonChartPull BuildErrorReason = "ChartPullError"
	// ReasonMetadataPatch: the chart version cannot take build metadata.
	ReasonMetadataPatch BuildErrorReason = "MetadataPatchError"
	// ReasonValuesFiles: the values files could not be merged.
	ReasonValuesFiles BuildErrorReason = "ValuesFilesError"
	// ReasonDependencyBuild: the chart's dependencies are missing.
	ReasonDependencyBuild BuildErrorReason = "DependencyBuildError"
	// ReasonChartPackage: the chart could not be loaded or packaged.
	ReasonChartPackage BuildErrorReason = "ChartPackageError"
	// ReasonChartVerification: no signature of the chart verified.
	ReasonChartVerification BuildErrorReason = "ChartVerificationError"
)

// BuildError is a failed chart build and the part that failed.
type BuildError struct {
	Reason BuildErrorReason
	Err    error
}

func (e *BuildError) Error() string {
	return e.Err.Error()
}

// Unwrap returns the underlying error.
func (e *BuildError) Unwrap() error { return e.Err }

func buildErr(reason BuildErrorReason, format string, args ...any) *BuildError {
	return &BuildError{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// Build is the outcome of a chart build.
type Build struct {
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
	// Verified is set when a signature of the chart verified.
	Verified bool
}

// Complete reports whether the build produced a chart, or found the
// stored one up to date.
func (b *Build) Complete() bool { return b != nil && (b.UpToDate || b.Path != "") }

// HasMetadata reports whether the build got as far as the chart's name
// and version.
func (b *Build) HasMetadata() bool { return b != nil && b.Name != "" && b.Version != "" }

// Summary describes the build the way Flux's messages do.
func (b *Build) Summary() string {
	if !b.HasMetadata() {
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

// BuildOptions are what both builds take.
type BuildOptions struct {
	// ValuesFiles are merged in order into the chart's values; the
	// chart is then repackaged.
	ValuesFiles              []string
	IgnoreMissingValuesFiles bool
	// UpToDate reports whether the stored artifact already is the chart
	// name at version; the build then stops there.
	UpToDate func(name, version string) bool
	// Dir receives the downloaded or packaged chart.
	Dir string
}

// RemoteBuildOptions say which chart of a repository to build.
type RemoteBuildOptions struct {
	BuildOptions
	Chart string
	// Version is a semver range; empty is the latest version.
	Version string
	// VersionMetadata is set as the version's build metadata when values
	// files are merged (Flux uses the HelmChart's generation).
	VersionMetadata string
	// MaxSize bounds the chart download.
	MaxSize int64
	// Verifier, when set, checks the chart's signatures (charts of an
	// OCI registry only).
	Verifier verify.Verifier
}

// BuildFromRepository picks the chart version from the repository's index,
// downloads the chart with c and, when values files are set, merges them
// and repackages it. Failures are *BuildError; b is returned as far as it
// got, so the caller can report the version it was building.
func BuildFromRepository(ctx context.Context, c *Client, idx *Index, o RemoteBuildOptions) (*Build, error) {
	cv, err := idx.Get(o.Chart, o.Version)
	if err != nil {
		return nil, buildErr(ReasonChartPull, "failed to get chart version for remote reference: %w", noVersionErr(o.Chart, o.Version, err))
	}

	b, err := newRemoteBuild(cv.Name, cv.Version, o.BuildOptions, o.VersionMetadata)
	if err != nil || b.UpToDate {
		return b, err
	}

	file, err := c.downloadChart(ctx, cv, o.Dir, o.MaxSize)
	if err != nil {
		return b, buildErr(ReasonChartPull, "failed to download chart for remote reference: %w", err)
	}
	return finishRemoteBuild(b, file, o.BuildOptions)
}

// newRemoteBuild starts the build of a repository's chart name at
// version: the version takes metadata when values files are merged, and
// the build stops there, UpToDate, when the stored artifact already is it.
func newRemoteBuild(name, version string, o BuildOptions, metadata string) (*Build, error) {
	b := &Build{Name: name, Version: version}
	if len(o.ValuesFiles) > 0 {
		var err error
		if b.Version, err = versionWithMetadata(version, metadata); err != nil {
			return b, err
		}
	}
	if o.UpToDate != nil && o.UpToDate(b.Name, b.Version) {
		b.UpToDate, b.Packaged = true, len(o.ValuesFiles) > 0
	}
	return b, nil
}

// finishRemoteBuild checks that the downloaded file is a valid chart and
// makes it b's package: as published without values files, else
// repackaged with the merged values at b's version.
func finishRemoteBuild(b *Build, file string, o BuildOptions) (*Build, error) {
	ch, err := loader.LoadFile(file)
	if err != nil {
		return b, buildErr(ReasonChartPull, "failed to load downloaded chart: %w", err)
	}
	if err := ch.Validate(); err != nil {
		return b, buildErr(ReasonChartPull, "failed to validate metadata of downloaded chart: %w", err)
	}
	if len(o.ValuesFiles) == 0 {
		// Stored exactly as published.
		b.Path = file
		return b, nil
	}
	ch.Metadata.Version = b.Version
	merged, used, err := mergeValues(o.ValuesFiles, o.IgnoreMissingValuesFiles, chartFileReader(ch))
	if err != nil {
		return b, buildErr(ReasonValuesFiles, "failed to merge chart values: %w", err)
	}
	if err := setValues(ch, merged); err != nil {
		return b, buildErr(ReasonValuesFiles, "failed to set chart values: %w", err)
	}
	b.ValuesFiles = used
	if b.Path, err = packageChart(ch, o.Dir); err != nil {
		return b, buildErr(ReasonChartPackage, "failed to package chart: %w", err)
	}
	b.Packaged = true
	return b, nil
}

// noVersionErr names the chart and version when the index has no match,
// instead of Helm's terser message.
func noVersionErr(chartName, version string, err error) error {
	switch {
	case errors.Is(err, repo.ErrNoChartName):
		return fmt.Errorf("no chart name '%s' found in the repository index", chartName)
	case strings.Contains(err.Error(), "no chart version found"):
		if version == "" {
			version = "*"
		}
		return fmt.Errorf("no '%s' chart with version matching '%s' found", chartName, version)
	}
	return err
}

// LocalBuildOptions say which chart of a source tree to build.
type LocalBuildOptions struct {
	BuildOptions
	// Chart is the path of a chart directory or package in the tree.
	Chart string
	// SourceKind names the tree's origin in messages.
	SourceKind string
	// VersionMetadata, when set, becomes the version's build metadata
	// (Flux: the source's short revision for reconcileStrategy Revision,
	// then the generation when values files are merged, dot-separated);
	// the chart is then repackaged.
	VersionMetadata string
	// Dependencies fetch the remote dependencies of a chart directory.
	Dependencies Dependencies
}

// BuildFromDirectory loads the chart at o.Chart in the source tree
// sourceDir (a directory or a packaged chart), applies the version
// metadata and values files, adds a chart directory's missing
// dependencies, and packages it; a packaged chart that needs neither is
// used as it is. Failures are *BuildError.
func BuildFromDirectory(ctx context.Context, sourceDir string, o LocalBuildOptions) (*Build, error) {
	rel := filepath.Clean(o.Chart)
	if !filepath.IsLocal(rel) {
		return nil, buildErr(ReasonChartReference, "chart path '%s' is not inside the source", o.Chart)
	}
	chartPath := filepath.Join(sourceDir, rel)
	fi, err := os.Stat(chartPath)
	if err != nil {
		return nil, buildErr(ReasonChartReference, "no chart at path '%s' in the %s artifact: %w", o.Chart, o.SourceKind, err)
	}
	ch, err := loader.Load(chartPath)
	if err != nil {
		return nil, buildErr(ReasonChartReference, "failed to load chart at path '%s': %w", o.Chart, err)
	}
	if err := ch.Validate(); err != nil {
		return nil, buildErr(ReasonChartReference, "invalid chart at path '%s': %w", o.Chart, err)
	}

	b := &Build{Name: ch.Name(), Version: ch.Metadata.Version}
	if b.Version, err = versionWithMetadata(ch.Metadata.Version, o.VersionMetadata); err != nil {
		return b, err
	}
	requiresPackaging := fi.IsDir() || o.VersionMetadata != ""
	if o.UpToDate != nil && o.UpToDate(b.Name, b.Version) {
		b.UpToDate, b.Packaged = true, requiresPackaging
		return b, nil
	}
	if !requiresPackaging {
		// A packaged chart in the source is stored as it is.
		b.Path = chartPath
		return b, nil
	}

	if len(o.ValuesFiles) > 0 {
		root, err := os.OpenRoot(sourceDir)
		if err != nil {
			return b, fmt.Errorf("failed to open the source: %w", err)
		}
		merged, used, err := mergeValues(o.ValuesFiles, o.IgnoreMissingValuesFiles, rootReader(root))
		root.Close()
		if err != nil {
			return b, buildErr(ReasonValuesFiles, "failed to merge chart values: %w", err)
		}
		if err := setValues(ch, merged); err != nil {
			return b, buildErr(ReasonValuesFiles, "failed to set chart values: %w", err)
		}
		b.ValuesFiles = used
	}
	ch.Metadata.Version = b.Version
	if fi.IsDir() {
		if err := addDependencies(ctx, ch, chartPath, sourceDir, o.Dependencies, o.Dir); err != nil {
			return b, buildErr(ReasonDependencyBuild, "failed to build dependencies: %w", err)
		}
	}
	if b.Path, err = packageChart(ch, o.Dir); err != nil {
		return b, buildErr(ReasonChartPackage, "failed to package chart: %w", err)
	}
	b.Packaged = true
	return b, nil
}

// ShortRevision is the first 12 hex characters of a source revision (a
// Git commit in <ref>@sha1:<hex>, a Bucket's sha256:<hex> digest), the
// build metadata Flux appends for reconcileStrategy Revision.
func ShortRevision(rev string) string {
	if i := strings.LastIndex(rev, ":"); i >= 0 {
		rev = rev[i+1:]
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	return rev
}

// versionWithMetadata sets SemVer build metadata on a chart version,
// replacing any it had, as Flux does for reconcileStrategy Revision and
// for values files.
func versionWithMetadata(version, metadata string) (string, error) {
	if metadata == "" {
		return version, nil
	}
	v, err := semver.NewVersion(version)
	if err != nil {
		return "", buildErr(ReasonMetadataPatch, "failed to parse version from chart metadata as SemVer: %w", err)
	}
	nv, err := v.SetMetadata(metadata)
	if err != nil {
		return "", buildErr(ReasonMetadataPatch, "failed to set SemVer metadata on chart version: %w", err)
	}
	return nv.String(), nil
}

// mergeValues merges values files in order, later files overriding
// earlier ones key by key. read returns a file's content or an error
// matching fs.ErrNotExist. It returns the merged values and the files that
// took part.
func mergeValues(paths []string, ignoreMissing bool, read func(p string) ([]byte, error)) (map[string]any, []string, error) {
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

// chartFileReader reads values files from a loaded chart: values.yaml
// is the chart's default values, anything else one of its files.
func chartFileReader(ch *chart.Chart) func(string) ([]byte, error) {
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

// rootReader reads values files relative to a source tree; a path
// leaving the tree is refused by the os.Root.
func rootReader(root *os.Root) func(string) ([]byte, error) {
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

// setValues replaces the chart's default values with merged.
func setValues(ch *chart.Chart, merged map[string]any) error {
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

// packageChart writes ch as the deterministic tar.gz <name>-<version>.tgz
// in dir and returns its path: Helm's chartutil.SaveDir lays the chart
// out, subcharts as directories under charts/, and package archive packs
// it with fixed times and modes, so packaging the same chart twice gives
// the same digest and consumers see no spurious new artifact.
func packageChart(ch *chart.Chart, dir string) (string, error) {
	tree, err := os.MkdirTemp(dir, "chart-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tree)
	if err := saveDir(ch, tree); err != nil {
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

// saveDir is chartutil.SaveDir with the subcharts saved as
// directories instead of tar.gz files stamped with the current time.
func saveDir(ch *chart.Chart, dest string) error {
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
		if err := saveDir(d, filepath.Join(base, chartutil.ChartsDir)); err != nil {
			return err
		}
	}
	return nil
}
