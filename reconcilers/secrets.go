package reconcilers

import (
	"context"
	"fmt"
	"net/url"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/secrets"
	corev1 "k8s.io/api/core/v1"
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

// getSecret reads the Secret a spec names, in Flux's words when it
// cannot.
func getSecret(ctx context.Context, c client.Reader, ns, name string) (*corev1.Secret, error) {
	secret := &corev1.Secret{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, secret); err != nil {
		return nil, fmt.Errorf("failed to get secret '%s/%s': %w", ns, name, err)
	}
	return secret, nil
}
