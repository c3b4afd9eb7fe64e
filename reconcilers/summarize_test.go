package reconcilers

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	"github.com/fluxcd/pkg/runtime/patch"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/record"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/sourceraft/sourceraft/api"
)

// TestSummarizeAndPatch checks the one place where a reconcile ends: the
// work queue result, the returned error, Ready/Stalled/Reconciling, the
// event policy and observedGeneration, for each kind of outcome. The API
// server is controller-runtime's fake client: what is under test is the
// status computation, not the API round trip (test/reconcile covers that).
func TestSummarizeAndPatch(t *testing.T) {
	const interval = 5 * time.Minute
	tests := []struct {
		name string
		// mark sets what the sub-reconcilers would have set.
		mark        func(o *sourcev1.GitRepository)
		res         Result
		err         error
		wantResult  ctrl.Result
		wantErr     bool
		wantReady   metav1.ConditionStatus
		wantReason  string
		wantStalled bool
		wantObsGen  bool
		wantEvent   string
		// wantReconciling is the reason Reconciling is left with; "" is
		// no Reconciling condition.
		wantReconciling string
	}{
		{
			name: "success",
			mark: func(o *sourcev1.GitRepository) {
				conditions.MarkReconciling(o, meta.ProgressingReason, "building artifact")
				conditions.MarkTrue(o, sourcev1.ArtifactInStorageCondition, meta.SucceededReason, "stored artifact for revision 'x'")
			},
			res: ResultSuccess, wantResult: ctrl.Result{RequeueAfter: interval},
			wantReady: metav1.ConditionTrue, wantReason: meta.SucceededReason, wantObsGen: true,
		},
		{
			name: "generic error is retried with backoff and recorded",
			mark: func(o *sourcev1.GitRepository) {
				conditions.MarkReconciling(o, meta.ProgressingReason, "building artifact")
				conditions.MarkTrue(o, sourcev1.FetchFailedCondition, sourcev1.GitOperationFailedReason, "fetch failed")
			},
			err:     NewGeneric(errors.New("fetch failed"), sourcev1.GitOperationFailedReason),
			wantErr: true, wantReady: metav1.ConditionFalse, wantReason: sourcev1.GitOperationFailedReason,
			wantEvent:       "Warning GitOperationFailed fetch failed",
			wantReconciling: meta.ProgressingWithRetryReason,
		},
		{
			name: "failed source verification gives Ready its reason, ahead of Reconciling",
			mark: func(o *sourcev1.GitRepository) {
				conditions.MarkReconciling(o, meta.ProgressingReason, "reconciliation in progress")
				conditions.MarkTrue(o, sourcev1.ArtifactInStorageCondition, meta.SucceededReason, "stored artifact for revision 'x'")
				conditions.MarkFalse(o, sourcev1.SourceVerifiedCondition, InvalidCommitSignatureReason, "signature verification failed")
			},
			err:     NewGeneric(errors.New("signature verification failed"), InvalidCommitSignatureReason),
			wantErr: true, wantReady: metav1.ConditionFalse, wantReason: InvalidCommitSignatureReason,
			wantEvent:       "Warning InvalidCommitSignature signature verification failed",
			wantReconciling: meta.ProgressingWithRetryReason,
		},
		{
			name: "stalling error is not retried",
			mark: func(o *sourcev1.GitRepository) {
				conditions.MarkReconciling(o, meta.ProgressingReason, "building artifact")
				conditions.MarkTrue(o, sourcev1.FetchFailedCondition, sourcev1.URLInvalidReason, "bad url")
			},
			err:       NewStalling(errors.New("bad url"), sourcev1.URLInvalidReason),
			wantReady: metav1.ConditionFalse, wantReason: sourcev1.URLInvalidReason, wantStalled: true, wantObsGen: true,
			wantEvent: "Warning URLInvalid bad url",
		},
		{
			name: "waiting error requeues after its interval without an event",
			mark: func(o *sourcev1.GitRepository) {
				conditions.MarkReconciling(o, meta.ProgressingReason, "reconciliation in progress")
				conditions.MarkTrue(o, sourcev1.IncludeUnavailableCondition, "NoArtifact", "no artifact for include")
			},
			err:        NewWaiting(errors.New("no artifact for include"), "NoArtifact", 7*time.Second),
			wantResult: ctrl.Result{RequeueAfter: 7 * time.Second},
			wantReady:  metav1.ConditionFalse, wantReason: "NoArtifact",
			wantReconciling: meta.ProgressingWithRetryReason,
		},
		{
			name:       "requeue",
			res:        ResultRequeue,
			wantResult: ctrl.Result{RequeueAfter: requeueNow},
		},
		{
			name: "requeue while building leaves Reconciling as a retry, and Ready with its reason",
			mark: func(o *sourcev1.GitRepository) {
				conditions.MarkReconciling(o, meta.ProgressingReason, "building artifact: new upstream revision 'x'")
				conditions.MarkUnknown(o, meta.ReadyCondition, meta.ProgressingReason, "building artifact: new upstream revision 'x'")
			},
			res:        ResultRequeue,
			wantResult: ctrl.Result{RequeueAfter: requeueNow},
			wantReady:  metav1.ConditionFalse, wantReason: meta.ProgressingWithRetryReason,
			wantReconciling: meta.ProgressingWithRetryReason,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obj := &sourcev1.GitRepository{
				ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "repo", Generation: 3,
					Annotations: map[string]string{meta.ReconcileRequestAnnotation: "now"}},
				Spec: sourcev1.GitRepositorySpec{URL: "https://example.com/repo.git", Interval: metav1.Duration{Duration: interval}},
				// A stale Stalled condition must not survive a non-stalling outcome.
				Status: sourcev1.GitRepositoryStatus{Conditions: []metav1.Condition{{
					Type: meta.StalledCondition, Status: metav1.ConditionTrue, Reason: "Old", Message: "old", LastTransitionTime: metav1.Now(),
				}}},
			}
			c := fake.NewClientBuilder().WithScheme(api.Scheme()).WithObjects(obj).WithStatusSubresource(obj).Build()
			if err := c.Get(context.Background(), client.ObjectKeyFromObject(obj), obj); err != nil {
				t.Fatal(err)
			}
			sp := patch.NewSerialPatcher(obj, c)
			if tt.mark != nil {
				tt.mark(obj)
			}
			rec := record.NewFakeRecorder(10)
			n := &notifier{EventRecorder: rec, controllerName: DefaultControllerName}
			result, err := n.summarizeAndPatch(context.Background(), obj, sp, gitRepositoryConditions, tt.res, tt.err)
			if result != tt.wantResult || (err != nil) != tt.wantErr {
				t.Fatalf("result %+v, err %v; want %+v, error %v", result, err, tt.wantResult, tt.wantErr)
			}

			got := &sourcev1.GitRepository{}
			if err := c.Get(context.Background(), client.ObjectKeyFromObject(obj), got); err != nil {
				t.Fatal(err)
			}
			if tt.wantReady != "" {
				ready := conditions.Get(got, meta.ReadyCondition)
				if ready == nil || ready.Status != tt.wantReady || ready.Reason != tt.wantReason {
					t.Errorf("Ready %+v, want %s/%s", ready, tt.wantReady, tt.wantReason)
				}
			}
			if conditions.IsTrue(got, meta.StalledCondition) != tt.wantStalled {
				t.Errorf("Stalled %v, want %v", conditions.Get(got, meta.StalledCondition), tt.wantStalled)
			}
			switch r := conditions.Get(got, meta.ReconcilingCondition); {
			case tt.wantReconciling == "" && r != nil:
				t.Errorf("Reconciling %+v left, want none", r)
			case tt.wantReconciling != "" && (r == nil || r.Status != metav1.ConditionTrue || r.Reason != tt.wantReconciling):
				t.Errorf("Reconciling %+v, want True/%s", r, tt.wantReconciling)
			}
			if (got.Status.ObservedGeneration == 3) != tt.wantObsGen {
				t.Errorf("observedGeneration %d (want it set: %v)", got.Status.ObservedGeneration, tt.wantObsGen)
			}
			if got.Status.LastHandledReconcileAt != "now" {
				t.Errorf("lastHandledReconcileAt %q, want the requestedAt annotation", got.Status.LastHandledReconcileAt)
			}
			select {
			case ev := <-rec.Events:
				if tt.wantEvent == "" || !strings.HasPrefix(ev, tt.wantEvent) {
					t.Errorf("event %q, want %q", ev, tt.wantEvent)
				}
			default:
				if tt.wantEvent != "" {
					t.Errorf("no event, want %q", tt.wantEvent)
				}
			}
		})
	}
}
