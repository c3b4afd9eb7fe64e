package reconcilers

import (
	"slices"

	"github.com/fluxcd/pkg/apis/meta"
	rreconcile "github.com/fluxcd/pkg/runtime/reconcile"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
)

// The conditions each kind owns, which of them feed Ready, and which are
// negative (True means something is wrong), declared here and nowhere
// else. summarize.go derives Ready from these and nothing else, and the
// status patch owns exactly the Owned list, so conditions written by
// anyone else are left alone.
//
// Order matters: the first negative condition that is True gives Ready
// its reason and message.
var (
	// gitRepositoryConditions is the condition set of GitRepository. Its
	// SourceVerified is positive but bipolar: False is a failure.
	gitRepositoryConditions = sourceConditions([]string{
		sourcev1.StorageOperationFailedCondition,
		sourcev1.FetchFailedCondition,
		sourcev1.BuildFailedCondition,
		sourcev1.IncludeUnavailableCondition,
		sourcev1.ArtifactOutdatedCondition,
	}, sourcev1.SourceVerifiedCondition)

	// helmRepositoryConditions is the condition set of HelmRepository.
	helmRepositoryConditions = sourceConditions([]string{
		sourcev1.StorageOperationFailedCondition,
		sourcev1.FetchFailedCondition,
		sourcev1.ArtifactOutdatedCondition,
	})

	// helmChartConditions is the condition set of HelmChart: it also owns
	// SourceVerified, set for charts of an oci HelmRepository.
	helmChartConditions = sourceConditions([]string{
		sourcev1.StorageOperationFailedCondition,
		sourcev1.FetchFailedCondition,
		sourcev1.BuildFailedCondition,
		sourcev1.ArtifactOutdatedCondition,
	}, sourcev1.SourceVerifiedCondition)

	// ociRepositoryConditions is the condition set of OCIRepository:
	// Flux's, with BuildFailed, which sourceraft sets when a layer is
	// over a size limit or its content cannot be archived.
	ociRepositoryConditions = sourceConditions([]string{
		sourcev1.StorageOperationFailedCondition,
		sourcev1.FetchFailedCondition,
		sourcev1.BuildFailedCondition,
		sourcev1.ArtifactOutdatedCondition,
	}, sourcev1.SourceVerifiedCondition)

	// bucketConditions is the condition set of Bucket (Flux's: no
	// BuildFailed or IncludeUnavailable).
	bucketConditions = sourceConditions([]string{
		sourcev1.StorageOperationFailedCondition,
		sourcev1.FetchFailedCondition,
		sourcev1.ArtifactOutdatedCondition,
	})
)

// biPolarConditions are the positive conditions whose False is a failure
// (Flux's bipolarity): a False one gives Ready its reason and message,
// ahead of every other condition, for the kinds that own it.
var biPolarConditions = []string{sourcev1.SourceVerifiedCondition}

// sourceConditions is the condition set of a source kind from its
// kind-specific negative conditions, in summary order, and its positive
// ones beyond ArtifactInStorage. Every kind also owns Ready, Reconciling
// and Stalled; Stalled and Reconciling are negative and summarized last.
func sourceConditions(negative []string, positive ...string) rreconcile.Conditions {
	positive = append([]string{sourcev1.ArtifactInStorageCondition}, positive...)
	return rreconcile.Conditions{
		Target:           meta.ReadyCondition,
		Owned:            slices.Concat(negative, positive, []string{meta.ReadyCondition, meta.ReconcilingCondition, meta.StalledCondition}),
		Summarize:        slices.Concat(negative, positive, []string{meta.StalledCondition, meta.ReconcilingCondition}),
		NegativePolarity: slices.Concat(negative, []string{meta.StalledCondition, meta.ReconcilingCondition}),
	}
}

// failureConditions are the negative conditions of conds whose removal
// after a failure is a recovery worth an event: all of them but
// ArtifactOutdated, Stalled and Reconciling.
func failureConditions(conds rreconcile.Conditions) []string {
	var out []string
	for _, c := range conds.NegativePolarity {
		switch c {
		case sourcev1.ArtifactOutdatedCondition, meta.StalledCondition, meta.ReconcilingCondition:
		default:
			out = append(out, c)
		}
	}
	return out
}
