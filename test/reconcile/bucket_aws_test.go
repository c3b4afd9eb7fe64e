package reconcile

import (
	"context"
	"crypto/x509"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"github.com/minio/minio-go/v7"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sourceraft/sourceraft/internal/minioserver"
	"github.com/sourceraft/sourceraft/internal/pki"
	"github.com/sourceraft/sourceraft/reconcilers"
)

// awsRegion is the region of the AWS Buckets here: their STS is
// sts.<awsRegion>.amazonaws.com, a name no other test routes.
const awsRegion = "eu-west-3"

// awsRoleARN is a role ARN of the form fluxcd/pkg/auth accepts. MinIO,
// the STS here, knows no such role and, trusting the apiserver as a
// claim-based OpenID provider, ignores it as it does for the AWS SDKs: it
// maps the token's subject to the policy of that name.
const awsRoleARN = "arn:aws:iam::123456789012:role/bucket-reader"

// awsMinIO is a MinIO that is also the AWS STS: it serves HTTPS with a
// certificate for sts.<awsRegion>.amazonaws.com (where the cloud proxy
// routes that name) and 127.0.0.1 (the Buckets' endpoint), and its
// AssumeRoleWithWebIdentity trusts the envtest apiserver's ServiceAccount
// tokens for the audience sts.amazonaws.com (what pkg/auth asks for),
// verified against the apiserver's JWKS. A token's subject
// (system:serviceaccount:<ns>:<name>) is the name of the MinIO policy the
// temporary credentials get: no policy of that name, no credentials.
func awsMinIO(t *testing.T) *minioserver.Server {
	t.Helper()
	ctx := context.Background()
	// The apiserver serves its OpenID discovery and keys to anyone, as a
	// cluster whose tokens AWS trusts must.
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "sourceraft-test-oidc-discovery"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:service-account-issuer-discovery"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: "system:unauthenticated"}},
	}
	if err := env.Client.Create(ctx, crb); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}

	sts := "sts." + awsRegion + ".amazonaws.com"
	pair, err := cloud.CA.Issue(sts, []string{sts}, []net.IP{net.ParseIP("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	certs := minioCertsDir(t, pair, map[string][]byte{"CAs/envtest-ca.crt": env.Config.CAData})
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(cloud.CA.PEM)
	m := minioserver.Start(t, minioserver.Options{
		Env: []string{
			"MINIO_IDENTITY_OPENID_CONFIG_URL=" + strings.TrimSuffix(env.Config.Host, "/") + "/.well-known/openid-configuration",
			"MINIO_IDENTITY_OPENID_CLIENT_ID=sts.amazonaws.com",
			"MINIO_IDENTITY_OPENID_CLAIM_NAME=sub",
		},
		Region:   awsRegion,
		CertsDir: certs,
		RootCAs:  roots,
	})
	cloud.Route(sts+":443", m.Endpoint)
	return m
}

// minioCertsDir is a MinIO --certs-dir serving pair, with more files
// (CAs/<name>, the CAs it trusts as a client) beside it.
func minioCertsDir(t *testing.T, pair pki.Pair, more map[string][]byte) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string][]byte{"public.crt": pair.CertPEM, "private.key": pair.KeyPEM}
	maps.Copy(files, more)
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// awsReadPolicy grants listing and reading bucket to whoever holds the
// policy named after ServiceAccount ns/name.
func awsReadPolicy(t *testing.T, m *minioserver.Server, ns, name, bucket string) {
	t.Helper()
	doc := fmt.Sprintf(`{"Version":"2012-10-17","Statement":[`+
		`{"Effect":"Allow","Action":["s3:ListBucket","s3:GetBucketLocation"],"Resource":["arn:aws:s3:::%[1]s"]},`+
		`{"Effect":"Allow","Action":["s3:GetObject"],"Resource":["arn:aws:s3:::%[1]s/*"]}]}`, bucket)
	if err := m.AddPolicy(context.Background(), "system:serviceaccount:"+ns+":"+name, doc); err != nil {
		t.Fatal(err)
	}
}

// awsServiceAccount creates a ServiceAccount, with the role-arn
// annotation when roleARN is set.
func awsServiceAccount(t *testing.T, ns, name, roleARN string) {
	t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if roleARN != "" {
		sa.Annotations = map[string]string{"eks.amazonaws.com/role-arn": roleARN}
	}
	createObject(t, sa, nil)
}

// newAWSBucket creates an aws Bucket on m without a secret, authenticating
// as ServiceAccount sa (the controller when empty).
func newAWSBucket(t *testing.T, m *minioserver.Server, ns, name, bucket, sa string, mutate func(*sourcev1.Bucket)) *sourcev1.Bucket {
	t.Helper()
	obj := &sourcev1.Bucket{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: sourcev1.BucketSpec{
			Provider:           sourcev1.BucketProviderAmazon,
			BucketName:         bucket,
			Endpoint:           m.Endpoint,
			Region:             awsRegion,
			ServiceAccountName: sa,
			Interval:           metav1.Duration{Duration: time.Hour},
			Timeout:            &metav1.Duration{Duration: 20 * time.Second},
		},
	}
	return createObject(t, obj, mutate)
}

// awsBucketObjects fills a new bucket on m and returns its name.
func awsBucketObjects(t *testing.T, m *minioserver.Server) string {
	t.Helper()
	name := "aws-" + strings.ToLower(fmt.Sprintf("%x", time.Now().UnixNano()))
	if err := m.Client.MakeBucket(context.Background(), name, minio.MakeBucketOptions{Region: awsRegion}); err != nil {
		t.Fatal(err)
	}
	m.Put(t, name, map[string]string{"deploy/app.yaml": "kind: ConfigMap\n", "README.md": "# aws\n"})
	return name
}

func TestBucketAWS(t *testing.T) {
	m := awsMinIO(t)
	bucket := awsBucketObjects(t, m)
	ns := namespaceFor(t, "aws")

	t.Run("service account", func(t *testing.T) {
		awsServiceAccount(t, ns, "reader", awsRoleARN)
		awsReadPolicy(t, m, ns, "reader", bucket)
		newAWSBucket(t, m, ns, "sa", bucket, "reader", nil)
		o := bucketReadyAt(t, ns, "sa", "")
		files := bucketCheckArtifact(t, o)
		if len(files) != 2 || files["deploy/app.yaml"] != "kind: ConfigMap\n" || files["README.md"] != "# aws\n" {
			t.Errorf("artifact files %v, want the bucket's two objects", fileNames(files))
		}
		if conditions.Has(o, sourcev1.FetchFailedCondition) || conditions.Has(o, meta.StalledCondition) {
			t.Errorf("Ready Bucket has failure conditions: %v", o.Status.Conditions)
		}
	})

	t.Run("spec.sts endpoint", func(t *testing.T) {
		awsServiceAccount(t, ns, "sts-reader", awsRoleARN)
		awsReadPolicy(t, m, ns, "sts-reader", bucket)
		newAWSBucket(t, m, ns, "sts", bucket, "sts-reader", func(b *sourcev1.Bucket) {
			b.Spec.STS = &sourcev1.BucketSTSSpec{Provider: sourcev1.STSProviderAmazon, Endpoint: "https://sts." + awsRegion + ".amazonaws.com"}
		})
		bucketCheckArtifact(t, bucketReadyAt(t, ns, "sts", ""))
	})

	t.Run("proxy", func(t *testing.T) {
		// spec.proxySecretRef carries the STS exchange as well as the S3
		// requests, instead of the process's proxy.
		sts := "sts." + awsRegion + ".amazonaws.com:443"
		p := startProxy(t, proxyUser, proxyPass)
		p.Route(sts, m.Endpoint)
		bucketSecret(t, ns, "aws-proxy", map[string]string{"address": p.URL(), "username": proxyUser, "password": proxyPass})
		awsServiceAccount(t, ns, "proxied", awsRoleARN)
		awsReadPolicy(t, m, ns, "proxied", bucket)
		viaCloud := cloud.Proxy.CarriedTo(sts)
		newAWSBucket(t, m, ns, "proxied", bucket, "proxied", func(b *sourcev1.Bucket) { b.Spec.ProxySecretRef = proxyRef("aws-proxy") })
		bucketCheckArtifact(t, bucketReadyAt(t, ns, "proxied", ""))
		if p.CarriedTo(sts) == 0 || p.CarriedTo(m.Endpoint) == 0 {
			t.Errorf("the Bucket's proxy carried %s, want the STS and the endpoint %s", p.Hosts(), m.Endpoint)
		}
		if n := cloud.Proxy.CarriedTo(sts); n != viaCloud {
			t.Errorf("the process's proxy carried %d more STS requests: the exchange went around the Bucket's proxy", n-viaCloud)
		}
	})

	t.Run("controller identity", func(t *testing.T) {
		// The controller's own identity is the AWS SDK's default chain:
		// here a web identity token file, as EKS's IRSA mounts. The
		// process environment is the controller's, so it is set only for
		// this test (no test runs in parallel).
		awsServiceAccount(t, ns, "controller", "")
		awsReadPolicy(t, m, ns, "controller", bucket)
		tr := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: []string{"sts.amazonaws.com"}}}
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "controller"}}
		if err := env.Client.SubResource("token").Create(context.Background(), sa, tr); err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		tokenFile := filepath.Join(dir, "token")
		if err := os.WriteFile(tokenFile, []byte(tr.Status.Token), 0o600); err != nil {
			t.Fatal(err)
		}
		for k, v := range map[string]string{
			"AWS_WEB_IDENTITY_TOKEN_FILE": tokenFile, "AWS_ROLE_ARN": awsRoleARN, "AWS_REGION": awsRegion,
			"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "", "AWS_PROFILE": "",
			"AWS_CONFIG_FILE": filepath.Join(dir, "none"), "AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "none"),
			"AWS_EC2_METADATA_DISABLED": "true",
			// A CA bundle makes the SDK refuse pkg/auth's HTTP client; the
			// machine's roots are the cloud CA here anyway.
			"AWS_CA_BUNDLE": "",
		} {
			t.Setenv(k, v)
		}
		newAWSBucket(t, m, ns, "controller", bucket, "", nil)
		o := bucketReadyAt(t, ns, "controller", "")
		if len(bucketCheckArtifact(t, o)) != 2 {
			t.Errorf("controller identity artifact lacks the bucket's objects")
		}
	})

	t.Run("refusals", func(t *testing.T) {
		other := awsBucketObjects(t, m)
		awsServiceAccount(t, ns, "no-annotation", "")
		awsServiceAccount(t, ns, "bad-annotation", "arn:aws:iam::123456789012:user/bucket-reader")
		awsServiceAccount(t, ns, "unmapped", awsRoleARN)
		awsServiceAccount(t, ns, "other-bucket", awsRoleARN)
		awsReadPolicy(t, m, ns, "other-bucket", other)
		arnPattern := `must match ^arn:aws[\w-]*:iam::[0-9]{1,30}:role/.{1,200}$`
		tests := []struct {
			name, sa string
			mutate   func(*sourcev1.Bucket)
			reason   string
			message  []string
			stalled  bool
		}{
			{"service account without role-arn", "no-annotation", nil, sourcev1.AuthenticationFailedReason,
				[]string{"AWS authentication failed: failed to get provider identity from service account '" + ns + "/no-annotation' annotations: invalid eks.amazonaws.com/role-arn annotation: ''. " + arnPattern}, false},
			{"service account with a user arn", "bad-annotation", nil, sourcev1.AuthenticationFailedReason,
				[]string{"invalid eks.amazonaws.com/role-arn annotation: 'arn:aws:iam::123456789012:user/bucket-reader'. " + arnPattern}, false},
			{"missing service account", "no-such-sa", nil, sourcev1.AuthenticationFailedReason,
				[]string{"AWS authentication failed: failed to get service account '" + ns + "/no-such-sa'", "not found"}, false},
			{"no region", "unmapped", func(b *sourcev1.Bucket) { b.Spec.Region = "" }, sourcev1.AuthenticationFailedReason,
				[]string{"an AWS region is required for authenticating with a service account. please configure one in the object spec"}, false},
			{"STS refuses the token", "unmapped", nil, sourcev1.AuthenticationFailedReason,
				[]string{"AWS authentication failed: failed to create provider access token for service account '" + ns + "/unmapped'",
					"AssumeRoleWithWebIdentity", "None of the given policies (`system:serviceaccount:" + ns + ":unmapped`) are defined"}, false},
			{"credentials for another bucket", "other-bucket", nil, sourcev1.BucketOperationFailedReason,
				[]string{"failed to confirm existence of '" + bucket + "' bucket", "Access Denied"}, false},
			{"STS endpoint off AWS", "unmapped", func(b *sourcev1.Bucket) {
				b.Spec.STS = &sourcev1.BucketSTSSpec{Provider: sourcev1.STSProviderAmazon, Endpoint: "https://sts.example.com"}
			}, sourcev1.AuthenticationFailedReason,
				[]string{"invalid STS endpoint: 'https://sts.example.com'. must match ^https://(.+\\.)?sts(-fips)?(\\.[^.]+)?(\\.vpce)?\\.amazonaws\\.com$"}, false},
			{"STS endpoint not a URL", "unmapped", func(b *sourcev1.Bucket) {
				b.Spec.STS = &sourcev1.BucketSTSSpec{Provider: sourcev1.STSProviderAmazon, Endpoint: "https://sts.%zz.amazonaws.com"}
			}, sourcev1.URLInvalidReason,
				[]string{"failed to parse STS endpoint 'https://sts.%zz.amazonaws.com'"}, true},
		}
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				name := fmt.Sprintf("refused-%d", i)
				newAWSBucket(t, m, ns, name, bucket, tt.sa, tt.mutate)
				checkBucketRefused(t, ns, name, tt.reason, tt.stalled, tt.message)
			})
		}
	})

	t.Run("sts provider", func(t *testing.T) {
		// The CRD refuses an STS of another provider, with Flux's rule.
		err := env.Client.Create(context.Background(), &sourcev1.Bucket{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ldap-for-aws"},
			Spec: sourcev1.BucketSpec{
				Provider: sourcev1.BucketProviderAmazon, BucketName: bucket, Endpoint: m.Endpoint, Region: awsRegion,
				Interval: metav1.Duration{Duration: time.Hour},
				STS:      &sourcev1.BucketSTSSpec{Provider: sourcev1.STSProviderLDAP, Endpoint: "https://sts." + awsRegion + ".amazonaws.com"},
			},
		})
		if err == nil || !strings.Contains(err.Error(), "'aws' is the only supported STS provider for the 'aws' Bucket provider") {
			t.Errorf("create with an ldap STS for aws: %v, want the CRD's refusal", err)
		}
		// The generic provider's ldap STS is not implemented: it stalls.
		newBucketSource(t, ns, "ldap", bucket, func(b *sourcev1.Bucket) {
			b.Spec.Endpoint, b.Spec.Insecure = m.Endpoint, false
			b.Spec.STS = &sourcev1.BucketSTSSpec{Provider: sourcev1.STSProviderLDAP, Endpoint: "https://" + m.Endpoint}
		})
		o := waitFailedAsFlux[*sourcev1.Bucket](t, ns, "ldap", sourcev1.FetchFailedCondition, reconcilers.UnsupportedFieldReason, true)
		if msg := conditions.GetMessage(o, sourcev1.FetchFailedCondition); msg != "not supported by sourceraft yet: spec.sts.provider 'ldap'" {
			t.Errorf("FetchFailed message %q", msg)
		}
	})
}
