package reconcilers

import (
	"context"

	"github.com/fluxcd/pkg/runtime/patch"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Result is what a sub-reconciler asks of the work queue. The values are
// ordered by how soon they bring the object back: Requeue (now), Success
// (at spec.interval), Empty (not at all).
type Result int

const (
	// ResultEmpty asks for nothing: no requeue unless an error says so.
	ResultEmpty Result = iota
	// ResultRequeue asks for an immediate requeue and ends the chain.
	ResultRequeue
	// ResultSuccess continues the chain; the object comes back at spec.interval.
	ResultSuccess
)

// lowestRequeue returns whichever of a and b brings the object back sooner.
func lowestRequeue(a, b Result) Result {
	switch {
	case a == ResultRequeue || b == ResultRequeue:
		return ResultRequeue
	case a == ResultSuccess || b == ResultSuccess:
		return ResultSuccess
	}
	return ResultEmpty
}

// step is one sub-reconciler of kind O with per-reconcile state S. Each
// step's doc comment lists the conditions it sets and removes.
type step[O client.Object, S any] func(ctx context.Context, sp *patch.SerialPatcher, obj O, s *S) (Result, error)

// runSteps runs steps in order: it stops at the first error (returning that
// step's result with it) or at the first ResultRequeue, and otherwise keeps
// the lowest requeue of all of them.
func runSteps[O client.Object, S any](ctx context.Context, sp *patch.SerialPatcher, obj O, s *S, steps []step[O, S]) (Result, error) {
	res := ResultEmpty
	for _, st := range steps {
		r, err := st(ctx, sp, obj, s)
		if err != nil {
			return r, err
		}
		if r == ResultRequeue {
			return ResultRequeue, nil
		}
		res = lowestRequeue(res, r)
	}
	return res, nil
}
