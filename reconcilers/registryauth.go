package reconcilers

import (
	"context"

	"github.com/fluxcd/pkg/auth"
	awsauth "github.com/fluxcd/pkg/auth/aws"
	azureauth "github.com/fluxcd/pkg/auth/azure"
	gcpauth "github.com/fluxcd/pkg/auth/gcp"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"

	ocisrc "github.com/sourceraft/sourceraft/sources/oci"
)

// registryProvider is fluxcd/pkg/auth's issuer of registry credentials
// for an OCIRepository's or oci HelmRepository's spec.provider; nil for
// generic (and empty), whose credentials come from Secrets only.
func registryProvider(name string) auth.ArtifactRegistryCredentialsProvider {
	switch name {
	case sourcev1.AmazonOCIProvider:
		return awsauth.Provider{}
	case sourcev1.AzureOCIProvider:
		return azureauth.Provider{}
	case sourcev1.GoogleOCIProvider:
		return gcpauth.Provider{}
	}
	return nil
}

// cloudRegistryLogin is what provider issues for host, the registry of
// repository (<host>/<path>, without oci://): the provider first refuses
// a registry that is not its own, then exchanges its access token (the
// controller's, or a ServiceAccount's as opts say) for the registry's.
// It is fetched once per reconcile, so that a refusal is reported as an
// authentication failure before any registry request; the token cache
// in opts keeps it across reconciles.
func cloudRegistryLogin(ctx context.Context, provider auth.ArtifactRegistryCredentialsProvider, host, repository string, opts ...auth.Option) (ocisrc.Credentials, error) {
	creds, err := auth.GetArtifactRegistryCredentials(ctx, provider, repository, opts...)
	if err != nil {
		return nil, err
	}
	return ocisrc.HostCredentials(host, creds)
}
