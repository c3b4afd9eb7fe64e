package reconcilers

import (
	"context"
	"fmt"
	"os"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	"github.com/fluxcd/pkg/runtime/patch"
	rreconcile "github.com/fluxcd/pkg/runtime/reconcile"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"

	"github.com/sourceraft/sourceraft/storage"
)

// helmCheckStored is the storage step of the Helm kinds, like
// GitRepository's: it drops a status artifact that left the store and
// keeps the URLs on the current advertised address. setArtifact sets the
// kind's status artifact and status URL.
//
// Sets Reconciling and Ready=Unknown when there is no artifact; removes
// ArtifactInStorage then.
func helmCheckStored(ctx context.Context, store *artifactStore, sp *patch.SerialPatcher, obj sourceObject, setArtifact func(*meta.Artifact, string), opts []patch.Option) (Result, error) {
	var missing bool
	if cur := obj.GetArtifact(); cur != nil {
		a, err := fromStatus(cur)
		if err == nil {
			var ok bool
			ok, err = store.Exists(ctx, a)
			missing = err == nil && !ok
		}
		if err != nil {
			e := NewGeneric(fmt.Errorf("failed to check the artifact in storage: %w", err), sourcev1.StatOperationFailedReason)
			conditions.MarkTrue(obj, sourcev1.StorageOperationFailedCondition, e.Reason, "%s", e)
			return ResultEmpty, e
		}
		if missing {
			setArtifact(nil, "")
		} else {
			cur.URL = a.URL(store.advAddr)
			setArtifact(cur, cur.URL)
		}
	}
	if obj.GetArtifact() == nil {
		msg := "building artifact"
		if missing {
			msg += ": disappeared from storage"
		}
		rreconcile.ProgressiveStatus(true, obj, meta.ProgressingReason, "%s", msg)
		conditions.Delete(obj, sourcev1.ArtifactInStorageCondition)
		if err := sp.Patch(ctx, obj, opts...); err != nil {
			return ResultEmpty, NewGeneric(err, sourcev1.PatchOperationFailedReason)
		}
	}
	return ResultSuccess, nil
}

// storeFile streams a local file into the store, which fills a.Digest
// and a.Size once the artifact is committed.
func (s *artifactStore) storeFile(ctx context.Context, a *storage.Artifact, file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	return s.Store(ctx, a, f)
}
