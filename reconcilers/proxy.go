package reconcilers

import (
	"context"
	"net/url"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/secrets"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// proxyFromSecretRef reads the proxy of a spec.proxySecretRef with Flux's
// keys and checks (fluxcd/pkg/runtime/secrets): address, an http, https
// or socks5 URL, and the optional username and password of its basic
// auth, carried in the URL's user info. A nil ref is no proxy.
func proxyFromSecretRef(ctx context.Context, c client.Client, ns string, ref *meta.LocalObjectReference) (*url.URL, error) {
	if ref == nil {
		return nil, nil
	}
	return secrets.ProxyURLFromSecretRef(ctx, c, types.NamespacedName{Namespace: ns, Name: ref.Name})
}
