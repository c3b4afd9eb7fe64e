package reconcilers

import (
	"strings"
	"testing"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/auth"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
)

// TestBucketServiceAccountGateOff: with the ObjectLevelWorkloadIdentity
// gate off a Bucket of a cloud provider (aws, gcp, azure) naming a
// ServiceAccount stalls before anything is read (the reconciler has no
// client: reaching one would panic), as Flux's does. It toggles the
// process-global gate, so it must not run in parallel.
func TestBucketServiceAccountGateOff(t *testing.T) {
	was := auth.IsObjectLevelWorkloadIdentityEnabled()
	auth.DisableObjectLevelWorkloadIdentity()
	t.Cleanup(func() {
		if was {
			auth.EnableObjectLevelWorkloadIdentity()
		}
	})
	for _, provider := range []string{sourcev1.BucketProviderAmazon, sourcev1.BucketProviderGoogle, sourcev1.BucketProviderAzure} {
		t.Run(provider, func(t *testing.T) {
			obj := &sourcev1.Bucket{Spec: sourcev1.BucketSpec{
				Provider: provider, ServiceAccountName: "reader",
				BucketName: "b", Endpoint: "s3.amazonaws.com", Region: "us-east-1",
			}}
			_, err := (&BucketReconciler{}).reconcileSource(t.Context(), nil, obj, &bucketState{})
			e, ok := err.(*Error)
			if !ok || !e.Stall || e.Reason != meta.FeatureGateDisabledReason {
				t.Fatalf("error %#v, want a stalling %s", err, meta.FeatureGateDisabledReason)
			}
			want := "to use spec.serviceAccountName for provider authentication please enable the ObjectLevelWorkloadIdentity feature gate in the controller"
			if msg := conditions.GetMessage(obj, sourcev1.FetchFailedCondition); msg != want {
				t.Errorf("FetchFailed message %q, want %q", msg, want)
			}
			if r := conditions.GetReason(obj, sourcev1.FetchFailedCondition); r != meta.FeatureGateDisabledReason {
				t.Errorf("FetchFailed reason %q", r)
			}
		})
	}
}

// TestUsesCloudIdentity: the generic provider never authenticates as a
// ServiceAccount, so the gate does not apply to it (Flux's condition).
func TestUsesCloudIdentity(t *testing.T) {
	for provider, want := range map[string]bool{"": false, sourcev1.BucketProviderGeneric: false,
		sourcev1.BucketProviderAmazon: true, sourcev1.BucketProviderGoogle: true, sourcev1.BucketProviderAzure: true} {
		obj := &sourcev1.Bucket{Spec: sourcev1.BucketSpec{Provider: provider, ServiceAccountName: "reader"}}
		if got := usesCloudIdentity(obj); got != want {
			t.Errorf("provider %q with a ServiceAccount: %v, want %v", provider, got, want)
		}
		obj.Spec.ServiceAccountName = ""
		if usesCloudIdentity(obj) {
			t.Errorf("provider %q without a ServiceAccount uses a cloud identity", provider)
		}
	}
}

// TestValidateBucketSTS: the combinations Flux's ValidateSTSProvider
// accepts and its messages for the others.
func TestValidateBucketSTS(t *testing.T) {
	ref := &meta.LocalObjectReference{Name: "s"}
	tests := []struct {
		provider string
		sts      sourcev1.BucketSTSSpec
		want     string
	}{
		{"aws", sourcev1.BucketSTSSpec{Provider: "aws"}, ""},
		{"generic", sourcev1.BucketSTSSpec{Provider: "ldap", SecretRef: ref, CertSecretRef: ref}, ""},
		{"aws", sourcev1.BucketSTSSpec{Provider: "ldap"}, "STS provider 'ldap' is not supported for 'aws' bucket provider"},
		{"generic", sourcev1.BucketSTSSpec{Provider: "aws"}, "STS provider 'aws' is not supported for 'generic' bucket provider"},
		{"aws", sourcev1.BucketSTSSpec{Provider: "aws", SecretRef: ref}, "spec.sts.secretRef is not required for the 'aws' STS provider"},
		{"aws", sourcev1.BucketSTSSpec{Provider: "aws", CertSecretRef: ref}, "spec.sts.certSecretRef is not required for the 'aws' STS provider"},
		{"gcp", sourcev1.BucketSTSSpec{Provider: "aws"}, "STS configuration is not supported for 'gcp' bucket provider"},
	}
	for _, tt := range tests {
		err := validateBucketSTS(tt.provider, &tt.sts)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s with %+v: %v", tt.provider, tt.sts, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s with %+v: %v, want %q", tt.provider, tt.sts, err, tt.want)
		}
	}
}
