package reconcilers

import (
	"context"
	"errors"

	eventv1 "github.com/fluxcd/pkg/apis/event/v1beta1"
	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	rreconcile "github.com/fluxcd/pkg/runtime/reconcile"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	corev1 "k8s.io/api/core/v1"
	kuberecorder "k8s.io/client-go/tools/record"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/sourceraft/sourceraft/storage"
)

// Event reasons beyond the condition reasons of the Flux API.
const (
	// NewArtifactReason is the reason of the event for a newly stored artifact.
	NewArtifactReason = "NewArtifact"
	// GarbageCollectionFailedReason is the reason of a failed collection of
	// superseded artifacts.
	GarbageCollectionFailedReason = "GarbageCollectionFailed"
	// GarbageCollectionSucceededReason is the reason of the collection of a
	// deleted object's artifacts.
	GarbageCollectionSucceededReason = "GarbageCollectionSucceeded"
)

// notifier records Kubernetes events, which the Flux events recorder also
// forwards to the notification-controller when --events-addr is set.
type notifier struct {
	kuberecorder.EventRecorder
	controllerName string
}

// artifactAnnotations are the event metadata Flux consumers read: the
// artifact's revision and digest under the source API group.
func artifactAnnotations(a *meta.Artifact) map[string]string {
	if a == nil {
		return nil
	}
	return map[string]string{
		sourcev1.GroupVersion.Group + "/" + eventv1.MetaRevisionKey: a.Revision,
		sourcev1.GroupVersion.Group + "/" + eventv1.MetaDigestKey:   a.Digest,
	}
}

// reportError logs err and records the event its policy asks for.
func (n *notifier) reportError(ctx context.Context, obj sourceObject, err error) {
	if err == nil {
		return
	}
	log := ctrl.LoggerFrom(ctx)
	var e *Error
	if !errors.As(err, &e) {
		// An untyped error is a bug in a sub-reconciler's error handling;
		// report it like a generic failure.
		e = NewGeneric(err, meta.FailedReason)
	}
	if e.Event == "" {
		log.Info(e.Error(), "reason", e.Reason)
		return
	}
	if e.Event == corev1.EventTypeWarning {
		log.Error(e.Err, "reconcile failed", "reason", e.Reason, "stalled", e.Stall)
	}
	n.AnnotatedEventf(obj, artifactAnnotations(obj.GetArtifact()), e.Event, e.Reason, "%s", e.Error())
}

// notifySuccess records the events of a reconcile that ended without error:
// NewArtifact when the artifact digest changed, Succeeded when it recovered
// from a failure of the kind's condition set conds, nothing otherwise.
func (n *notifier) notifySuccess(ctx context.Context, oldObj, newObj sourceObject, conds rreconcile.Conditions, message string) {
	art := newObj.GetArtifact()
	if art == nil {
		return
	}
	annotations := artifactAnnotations(art)
	switch {
	case !oldObj.GetArtifact().HasDigest(art.Digest):
		n.AnnotatedEventf(newObj, annotations, corev1.EventTypeNormal, NewArtifactReason, "%s", message)
		ctrl.LoggerFrom(ctx).Info(message, "revision", art.Revision, "digest", art.Digest)
	case failureRecovery(oldObj, newObj, conds):
		n.AnnotatedEventf(newObj, annotations, corev1.EventTypeNormal, meta.SucceededReason, "%s", message)
		ctrl.LoggerFrom(ctx).Info(message)
	}
}

// notifyUpToDate records the trace event of a reconcile that found the
// stored artifact up to date with the source's revision.
func (n *notifier) notifyUpToDate(obj sourceObject, revision string) {
	n.AnnotatedEventf(obj, artifactAnnotations(obj.GetArtifact()), eventv1.EventTypeTrace, sourcev1.ArtifactUpToDateReason,
		"artifact up-to-date with remote revision: '%s'", revision)
}

// collectSuperseded applies the retention policy with art, the artifact
// obj's status names, as the current one. A failure does not fail the reconcile; it is reported
// as a warning event.
func (n *notifier) collectSuperseded(ctx context.Context, store *artifactStore, obj sourceObject, art storage.Artifact) {
	if err := store.collectGarbage(ctx, art); err != nil {
		n.AnnotatedEventf(obj, nil, corev1.EventTypeWarning, GarbageCollectionFailedReason,
			"garbage collection of superseded artifacts failed: %s", err)
	}
}

// failureRecovery reports whether oldObj had one of the failure conditions
// of conds (conditions.go) True and newObj has none of them.
func failureRecovery(oldObj, newObj sourceObject, conds rreconcile.Conditions) bool {
	failed := false
	for _, c := range failureConditions(conds) {
		if conditions.IsTrue(oldObj, c) {
			failed = true
		}
		if conditions.IsTrue(newObj, c) {
			return false
		}
	}
	return failed
}
