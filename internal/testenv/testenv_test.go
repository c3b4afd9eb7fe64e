package testenv

import (
	"context"
	"strings"
	"testing"
	"time"

	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// TestControlPlaneServesFluxSchema proves the control plane is a real API
// server enforcing the generated CRD schemas: defaults are applied, OpenAPI
// and CEL validation reject bad objects, and every source kind is served.
func TestControlPlaneServesFluxSchema(t *testing.T) {
	began := time.Now()
	_, c, _ := Start(t)
	t.Logf("control plane up with CRDs installed in %s", time.Since(began).Round(time.Millisecond))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "testenv-"}}
	if err := c.Create(ctx, ns); err != nil {
		t.Fatalf("create namespace: %v", err)
	}

	repo := &sourcev1.GitRepository{
		ObjectMeta: metav1.ObjectMeta{Name: "podinfo", Namespace: ns.Name},
		Spec: sourcev1.GitRepositorySpec{
			URL:      "https://example.com/stefanprodan/podinfo",
			Interval: metav1.Duration{Duration: time.Minute},
			Reference: &sourcev1.GitRepositoryRef{
				Branch: "master",
			},
		},
	}
	if err := c.Create(ctx, repo); err != nil {
		t.Fatalf("create GitRepository: %v", err)
	}

	var got sourcev1.GitRepository
	if err := c.Get(ctx, client.ObjectKeyFromObject(repo), &got); err != nil {
		t.Fatalf("get GitRepository: %v", err)
	}
	if got.Spec.URL != repo.Spec.URL || got.Spec.Interval.Duration != time.Minute || got.Spec.Reference == nil || got.Spec.Reference.Branch != "master" {
		t.Errorf("read back spec %+v, want url %q interval 1m branch master", got.Spec, repo.Spec.URL)
	}
	// Only the API server applies CRD defaults, so this shows the object
	// went through the generated schema rather than a client-side cache.
	if got.Spec.Timeout == nil || got.Spec.Timeout.Duration != 60*time.Second {
		t.Errorf("spec.timeout = %v, want the CRD default 60s", got.Spec.Timeout)
	}

	invalid := []struct {
		name    string
		obj     client.Object
		wantMsg string
	}{
		{
			name:    "url scheme not allowed by pattern",
			obj:     gitRepo(ns.Name, "bad-url", map[string]any{"url": "ftp://example.com/repo", "interval": "1m"}),
			wantMsg: "spec.url",
		},
		{
			name:    "interval missing",
			obj:     gitRepo(ns.Name, "no-interval", map[string]any{"url": "https://example.com/repo"}),
			wantMsg: "spec.interval",
		},
		{
			name:    "interval not a duration",
			obj:     gitRepo(ns.Name, "bad-interval", map[string]any{"url": "https://example.com/repo", "interval": "often"}),
			wantMsg: "spec.interval",
		},
		{
			name: "CEL rule: serviceAccountName needs azure or aws provider",
			obj: gitRepo(ns.Name, "bad-sa", map[string]any{
				"url": "https://example.com/repo", "interval": "1m",
				"provider": "generic", "serviceAccountName": "sa",
			}),
			wantMsg: "serviceAccountName can only be set when provider is 'azure' or 'aws'",
		},
	}
	for _, tc := range invalid {
		t.Run(tc.name, func(t *testing.T) {
			err := c.Create(ctx, tc.obj)
			if !apierrors.IsInvalid(err) {
				t.Fatalf("create: got %v, want an Invalid error from the API server", err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not mention %q", err, tc.wantMsg)
			}
		})
	}

	for _, list := range []client.ObjectList{
		&sourcev1.GitRepositoryList{},
		&sourcev1.HelmRepositoryList{},
		&sourcev1.HelmChartList{},
		&sourcev1.OCIRepositoryList{},
		&sourcev1.BucketList{},
	} {
		if err := c.List(ctx, list, client.InNamespace(ns.Name)); err != nil {
			t.Errorf("list %T: %v", list, err)
		}
	}
}

// gitRepo builds the object as unstructured so that fields the typed struct
// would always serialize (interval is not omitempty) can be left out.
func gitRepo(ns, name string, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
	u.SetGroupVersionKind(sourcev1.GroupVersion.WithKind(sourcev1.GitRepositoryKind))
	u.SetNamespace(ns)
	u.SetName(name)
	return u
}

func TestAssetsDirNamesTheMakeTarget(t *testing.T) {
	t.Setenv("KUBEBUILDER_ASSETS", t.TempDir())
	_, err := AssetsDir()
	if err == nil || !strings.Contains(err.Error(), "make envtest-bins") {
		t.Fatalf("AssetsDir() error = %v, want one naming make envtest-bins", err)
	}
}

func TestRepoRootSkipsNestedModules(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir(root + "/hack/envtest/etcd")
	again, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if again != root {
		t.Errorf("RepoRoot from hack/envtest/etcd = %s, want %s", again, root)
	}
}
