package reconcile

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	gcrv1 "github.com/google/go-containerregistry/pkg/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ociDockerConfigSecret creates a kubernetes.io/dockerconfigjson Secret
// for host.
func ociDockerConfigSecret(t *testing.T, ns, name, host, user, pass string) {
	t.Helper()
	cfg, err := json.Marshal(map[string]any{"auths": map[string]any{
		host: map[string]string{"username": user, "password": pass, "auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))},
	}})
	if err != nil {
		t.Fatal(err)
	}
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: cfg},
	}
	if err := env.Client.Create(context.Background(), s); err != nil {
		t.Fatal(err)
	}
}

// ociNew creates an insecure (plain HTTP) OCIRepository with a long
// interval, so that only spec changes and requestedAt annotations
// trigger reconciles.
func ociNew(t *testing.T, ns, name, url string, mutate func(*sourcev1.OCIRepository)) *sourcev1.OCIRepository {
	t.Helper()
	obj := &sourcev1.OCIRepository{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: sourcev1.OCIRepositorySpec{
			URL:      url,
			Insecure: true,
			Interval: metav1.Duration{Duration: time.Hour},
			Timeout:  &metav1.Duration{Duration: 20 * time.Second},
		},
	}
	return createObject(t, obj, mutate)
}

// The OCIRepository forms of the generic helpers (main_test.go).
var (
	ociGet              = getObject[*sourcev1.OCIRepository]
	ociWaitFor          = waitForObject[*sourcev1.OCIRepository]
	ociReadyAt          = waitReady[*sourcev1.OCIRepository]
	ociFailedWith       = waitFailed[*sourcev1.OCIRepository]
	ociRequestReconcile = requestReconcileOf[*sourcev1.OCIRepository]
	ociStored           = storedOf[*sourcev1.OCIRepository]
)

// ociCheckArtifact checks the status artifact against Flux's layout for
// manifest digest, downloads it and returns its bytes.
func ociCheckArtifact(t *testing.T, o *sourcev1.OCIRepository, digest gcrv1.Hash) []byte {
	t.Helper()
	a := o.Status.Artifact
	wantPath := "ocirepository/" + o.Namespace + "/" + o.Name + "/" + digest.String() + ".tar.gz"
	if a.Path != wantPath {
		t.Errorf("artifact path %q, want %q", a.Path, wantPath)
	}
	if a.URL != "http://"+advAddr+"/"+wantPath || o.Status.URL != aliasURL(a) {
		t.Errorf("artifact URL %q, status URL %q, want http://%s/%s and its latest.tar.gz", a.URL, o.Status.URL, advAddr, wantPath)
	}
	if !conditions.IsTrue(o, sourcev1.ArtifactInStorageCondition) {
		t.Errorf("ArtifactInStorage is not True: %v", o.Status.Conditions)
	}
	return download(t, a)
}
