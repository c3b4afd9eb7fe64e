package reconcilers

import (
	"fmt"
	"net/url"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/auth"
	"github.com/fluxcd/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// cloudAuthOptions are fluxcd/pkg/auth's options for the cloud provider
// credentials of obj (of kind): the controller's own identity, or with
// serviceAccount the token of that ServiceAccount in obj's namespace
// exchanged for the provider's (object-level workload identity); tokens
// when caching, and the proxy that carries the exchange like the fetch.
func cloudAuthOptions(c client.Client, tokens *cache.TokenCache, kind string, obj client.Object, serviceAccount string, proxy *url.URL) []auth.Option {
	opts := []auth.Option{auth.WithClient(c), auth.WithServiceAccountNamespace(obj.GetNamespace())}
	if serviceAccount != "" {
		opts = append(opts, auth.WithServiceAccountName(serviceAccount))
	}
	if tokens != nil {
		opts = append(opts, auth.WithCache(*tokens, cache.InvolvedObject{
			Kind: kind, Name: obj.GetName(), Namespace: obj.GetNamespace(), Operation: cache.OperationReconcile,
		}))
	}
	if proxy != nil {
		opts = append(opts, auth.WithProxyURL(*proxy))
	}
	return opts
}

// objectLevelIdentityCheck stalls an object that authenticates to its
// provider as a ServiceAccount of its own while the
// ObjectLevelWorkloadIdentity feature gate is off, with Flux's reason and
// message: the controller must not silently use its own identity instead.
func objectLevelIdentityCheck(serviceAccount string) *Error {
	if serviceAccount == "" || auth.IsObjectLevelWorkloadIdentityEnabled() {
		return nil
	}
	const gate = auth.FeatureGateObjectLevelWorkloadIdentity
	return NewStalling(fmt.Errorf("to use spec.serviceAccountName for provider authentication please enable the %s feature gate in the controller", gate), meta.FeatureGateDisabledReason)
}
