package reconcile

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// helmRandom is incompressible data, for charts over the size limit.
func helmRandom(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func helmNamespace(t *testing.T) string {
	t.Helper()
	return namespaceFor(t, "helm")
}

// newHelmRepository creates a HelmRepository with a long interval.
func newHelmRepository(t *testing.T, ns, name, url string, mutate func(*sourcev1.HelmRepository)) *sourcev1.HelmRepository {
	t.Helper()
	obj := &sourcev1.HelmRepository{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: sourcev1.HelmRepositorySpec{
			URL:      url,
			Interval: metav1.Duration{Duration: time.Hour},
			Timeout:  &metav1.Duration{Duration: 20 * time.Second},
		},
	}
	return createObject(t, obj, mutate)
}

// newHelmChart creates a HelmChart with a long interval.
func newHelmChart(t *testing.T, ns, name, kind, source, chartName string, mutate func(*sourcev1.HelmChart)) *sourcev1.HelmChart {
	t.Helper()
	obj := &sourcev1.HelmChart{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: sourcev1.HelmChartSpec{
			Chart:     chartName,
			SourceRef: sourcev1.LocalHelmChartSourceReference{Kind: kind, Name: source},
			Interval:  metav1.Duration{Duration: time.Hour},
		},
	}
	return createObject(t, obj, mutate)
}

func newHelmSecret(t *testing.T, ns, name string, data map[string]string) {
	t.Helper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, StringData: data}
	if err := env.Client.Create(context.Background(), s); err != nil {
		t.Fatal(err)
	}
}

// The Helm kinds' forms of the generic helpers (main_test.go), on the
// object itself rather than its name.

func helmWaitFor[O sourceObject](t *testing.T, obj O, timeout time.Duration, what string, cond func(O) bool) O {
	t.Helper()
	return waitForObject(t, obj.GetNamespace(), obj.GetName(), timeout, what, cond)
}

func helmReady[O sourceObject](t *testing.T, obj O, revision string) O {
	t.Helper()
	return waitReady[O](t, obj.GetNamespace(), obj.GetName(), revision)
}

func helmFailedWith[O sourceObject](t *testing.T, obj O, cond, reason string) O {
	t.Helper()
	return waitFailed[O](t, obj.GetNamespace(), obj.GetName(), cond, reason)
}

func helmRequestReconcile[O client.Object](t *testing.T, obj O) {
	t.Helper()
	requestReconcileOf[O](t, obj.GetNamespace(), obj.GetName())
}
