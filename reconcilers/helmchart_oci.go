package reconcilers

import (
	"context"
	"errors"
	"fmt"

	"github.com/fluxcd/pkg/auth"
	"github.com/fluxcd/pkg/cache"
	"github.com/fluxcd/pkg/runtime/secrets"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	helmsrc "github.com/sourceraft/sourceraft/sources/helm"
	ocisrc "github.com/sourceraft/sourceraft/sources/oci"
)

// buildFromOCIHelmRepository pulls the chart from the registry of an oci
// HelmRepository, as Flux v1 does: the repository is static, so there is
// no index artifact to wait for; the version is resolved from the
// registry's tags at every reconcile (an exact version is not listed)
// and the chart is pulled unless the stored artifact already is it.
// Values files are merged and the chart repackaged as for an HTTP(S)
// repository; reconcileStrategy has nothing to act on (the source has no
// revision), as in Flux. spec.verify checks the chart's signatures at
// every reconcile, before the stored chart is found up to date.
func (r *HelmChartReconciler) buildFromOCIHelmRepository(ctx context.Context, obj *sourcev1.HelmChart, repoObj *sourcev1.HelmRepository, dir string) (*helmsrc.Build, error) {
	oc, err := newHelmOCIClient(ctx, r.Client, repoObj, r.registryAuthOptions(obj)...)
	if err != nil {
		return nil, err
	}
	defer oc.Close()

	fetchCtx, cancel := context.WithTimeout(ctx, helmTimeout(repoObj))
	defer cancel()
	o := r.remoteBuildOptions(obj, dir)
	if v := obj.Spec.Verify; v != nil && v.Provider != "" {
		// HelmChart's spec.verify has no trustedRootSecretRef: keyless
		// would need the public Sigstore infrastructure.
		if o.Verifier, err = newOCIVerifier(ctx, r.Client, obj.Namespace, v.Provider, v.SecretRef, v.MatchOIDCIdentity, nil, oc.Registry()); err != nil {
			err = fmt.Errorf("failed to verify the signature using provider '%s': %w", verifyProviderName(v.Provider, v.SecretRef != nil), err)
			if errors.Is(err, errKeylessPublicSigstore) {
				return nil, NewStalling(err, sourcev1.VerificationError)
			}
			return nil, NewGeneric(err, sourcev1.VerificationError)
		}
	}
	b, err := helmsrc.BuildFromOCI(fetchCtx, oc, o)
	if b != nil && b.UpToDate {
		b.ValuesFiles = obj.Status.ObservedValuesFiles
	}
	if errors.Is(err, helmsrc.ErrAuthentication) {
		// Flux reports refused credentials and failed TLS handshakes so.
		return b, NewGeneric(fmt.Errorf("failed to authenticate with the Helm repository: %w", err), sourcev1.AuthenticationFailedReason)
	}
	return b, err
}

// newHelmOCIClient configures the registry client of an oci HelmRepository
// from its URL, insecure (plain HTTP), timeout, secretRef, provider and
// certSecretRef as Flux does: a kubernetes.io/dockerconfigjson secret
// must hold the credentials of the URL's host, any other secret
// username and password; without a secretRef a cloud provider issues
// them as the controller (with cloud's fluxcd/pkg/auth options); certSecretRef's
// ca.crt is added to the system's CAs. A URL that is not oci:// stalls; a
// secret that cannot be read or used, or credentials the provider
// refuses, are an authentication failure.
func newHelmOCIClient(ctx context.Context, c client.Reader, obj *sourcev1.HelmRepository, cloud ...auth.Option) (*helmsrc.OCIClient, error) {
	u, err := helmsrc.ParseOCIURL(obj.Spec.URL)
	if err != nil {
		return nil, NewStalling(err, sourcev1.URLInvalidReason)
	}
	o := helmsrc.OCIOptions{PlainHTTP: obj.Spec.Insecure, Timeout: helmTimeout(obj)}
	if ref := obj.Spec.SecretRef; ref != nil {
		secret, err := getSecret(ctx, c, obj.Namespace, ref.Name)
		if err != nil {
			return nil, NewGeneric(err, sourcev1.AuthenticationFailedReason)
		}
		if o.Username, o.Password, err = helmOCICredentials(ctx, secret, u.Host); err != nil {
			return nil, NewGeneric(fmt.Errorf("failed to configure OCI registry authentication: %w", err), sourcev1.AuthenticationFailedReason)
		}
	} else if p := registryProvider(obj.Spec.Provider); p != nil {
		creds, err := cloudRegistryLogin(ctx, p, u.Host, u.Host+u.Path, cloud...)
		if err != nil {
			return nil, NewGeneric(fmt.Errorf("unable to get authentication data from OIDC: %w", err), sourcev1.AuthenticationFailedReason)
		}
		login := creds[u.Host]
		if (login.Username == "") != (login.Password == "") {
			return nil, NewGeneric(errors.New("invalid auth data: required fields 'username' and 'password'"), sourcev1.AuthenticationFailedReason)
		}
		o.Username, o.Password = login.Username, login.Password
	}
	if ref := obj.Spec.CertSecretRef; ref != nil {
		secret, err := getSecret(ctx, c, obj.Namespace, ref.Name)
		if err != nil {
			return nil, NewGeneric(err, sourcev1.AuthenticationFailedReason)
		}
		if o.TLS, err = secrets.TLSConfigFromSecret(ctx, secret, secrets.WithSystemCertPool()); err != nil {
			return nil, NewGeneric(fmt.Errorf("invalid TLS data in secret '%s/%s': %w", obj.Namespace, ref.Name, err), sourcev1.AuthenticationFailedReason)
		}
	}
	return helmsrc.NewOCIClient(u, o), nil
}

// registryAuthOptions are the fluxcd/pkg/auth options of the cloud
// credentials a HelmChart's oci HelmRepository (or dependency registry)
// asks for. As Flux's HelmChart reconciler, the controller's own
// identity: no client, so neither a ServiceAccount nor
// --default-service-account applies; only the token cache is added.
func (r *HelmChartReconciler) registryAuthOptions(obj *sourcev1.HelmChart) []auth.Option {
	if r.TokenCache == nil {
		return nil
	}
	return []auth.Option{auth.WithCache(*r.TokenCache, cache.InvolvedObject{
		Kind: sourcev1.HelmChartKind, Name: obj.Name, Namespace: obj.Namespace, Operation: cache.OperationReconcile,
	})}
}

// helmOCICredentials are the username and password a HelmRepository's
// secretRef holds for registry host: a Docker config's entry for it, or
// the secret's basic auth (none: anonymous).
func helmOCICredentials(ctx context.Context, secret *corev1.Secret, host string) (string, string, error) {
	if secret.Type != corev1.SecretTypeDockerConfigJson {
		return helmBasicAuth(ctx, secret)
	}
	creds, err := ocisrc.ParseDockerConfig(secret.Data[corev1.DockerConfigJsonKey], nil)
	if err != nil {
		return "", "", fmt.Errorf("secret '%s/%s': %w", secret.Namespace, secret.Name, err)
	}
	a, ok := creds[host]
	if !ok {
		return "", "", fmt.Errorf("no auth config for '%s' in the docker-registry Secret '%s/%s'", host, secret.Namespace, secret.Name)
	}
	return a.Username, a.Password, nil
}

// helmBasicAuth is the username and password of a HelmRepository secret,
// empty when it has neither.
func helmBasicAuth(ctx context.Context, secret *corev1.Secret) (string, string, error) {
	basic, err := secrets.BasicAuthFromSecret(ctx, secret)
	switch {
	case err == nil:
		return basic.Username, basic.Password, nil
	case errors.Is(err, secrets.ErrKeyNotFound):
		return "", "", nil
	}
	return "", "", fmt.Errorf("invalid basic auth in secret '%s/%s': %w", secret.Namespace, secret.Name, err)
}
