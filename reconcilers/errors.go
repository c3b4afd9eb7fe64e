package reconcilers

import (
	"fmt"
	"strings"
	"time"

	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	corev1 "k8s.io/api/core/v1"
)

// Error is a reconcile failure that carries the reason set on conditions and
// events and how it is reported, so that the reporting policy lives here and
// in summarize.go rather than at every failure site:
//
//	kind      event    requeue                     Stalled  constructor
//	generic   Warning  with backoff (error)        no       NewGeneric
//	stalling  Warning  never, until the spec changes  yes   NewStalling
//	waiting   none     after RequeueAfter          no       NewWaiting
type Error struct {
	Err error
	// Reason is a CamelCase reason for conditions and events.
	Reason string
	// Event is the type of the Kubernetes event recorded for the failure,
	// or "" for none (the failure is still logged).
	Event string
	// Stall marks a failure retrying cannot fix, such as an invalid URL: the
	// object is marked Stalled and not requeued until it changes.
	Stall bool
	// RequeueAfter, when positive, retries after this long instead of with
	// the work queue's error backoff: the object waits on a dependency.
	RequeueAfter time.Duration
}

// DefaultRequeueDependency is how long an object waiting on a dependency
// waits when no interval is configured; Flux's --requeue-dependency default.
const DefaultRequeueDependency = 30 * time.Second

func (e *Error) Error() string { return e.Err.Error() }

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// NewGeneric is a failure worth retrying with backoff: a fetch, an
// authentication or a storage operation failed.
func NewGeneric(err error, reason string) *Error {
	return &Error{Err: err, Reason: reason, Event: corev1.EventTypeWarning}
}

// NewStalling is a failure only a change of the object can fix.
func NewStalling(err error, reason string) *Error {
	return &Error{Err: err, Reason: reason, Event: corev1.EventTypeWarning, Stall: true}
}

// NewWaiting is a dependency that is not ready yet; it is retried after
// requeueAfter without an event.
func NewWaiting(err error, reason string, requeueAfter time.Duration) *Error {
	if requeueAfter <= 0 {
		requeueAfter = DefaultRequeueDependency
	}
	return &Error{Err: err, Reason: reason, RequeueAfter: requeueAfter}
}

// fetchFailed marks FetchFailed with e's reason and message and returns e
// as the step's outcome: how every source step reports a failed fetch.
func fetchFailed(obj conditions.Setter, e *Error) (Result, error) {
	conditions.MarkTrue(obj, sourcev1.FetchFailedCondition, e.Reason, "%s", e)
	return ResultEmpty, e
}

// notSupported names the spec fields this build cannot honour yet, nil
// when there are none; the caller stalls with UnsupportedFieldReason.
func notSupported(fields []string) error {
	if len(fields) == 0 {
		return nil
	}
	return fmt.Errorf("not supported by sourceraft yet: %s", strings.Join(fields, ", "))
}
