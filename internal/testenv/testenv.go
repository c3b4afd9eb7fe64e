// Package testenv starts a real Kubernetes API server and etcd (envtest) with
// the Flux source CRDs installed, for tests that need the Kubernetes API.
//
// The binaries are the ones `make envtest-bins` builds into bin/k8s; nothing
// is downloaded at test time, since the test machines can reach only the Go
// module proxy. A missing binary is a test failure with the command to run,
// not a skip: a silently skipped integration suite looks like a passing one.
//
// Typical use, one control plane per test binary:
//
//	var env *testenv.Env
//
//	func TestMain(m *testing.M) {
//		var err error
//		if env, err = testenv.StartEnv(); err != nil {
//			fmt.Fprintln(os.Stderr, err)
//			os.Exit(1)
//		}
//		code := m.Run()
//		env.Stop()
//		os.Exit(code)
//	}
//
// or, for a single test, cfg, c, stop := testenv.Start(t).
package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/sourceraft/sourceraft/api"
)

// binaries are the executables envtest needs; kubectl is not among them.
var binaries = []string{"kube-apiserver", "etcd"}

// startTimeout is well above envtest's 20 s default: on the 2-core CI
// machine the API server can take that long when other test binaries are
// compiling or running under -race at the same time.
const startTimeout = 90 * time.Second

// Env is a running control plane with the Flux source CRDs installed.
type Env struct {
	// Config authenticates as a cluster admin (system:masters).
	Config *rest.Config
	// Client is a controller-runtime client built on api.Scheme().
	Client client.Client
	// Scheme knows the built-in kinds and source.toolkit.fluxcd.io/v1.
	Scheme *runtime.Scheme

	env      *envtest.Environment
	stopOnce sync.Once
	stopErr  error
}

// StartEnv starts etcd and kube-apiserver from AssetsDir, installs the CRDs
// from api.CRDs() and waits until they are served. Call Stop when done.
func StartEnv() (*Env, error) {
	assets, err := AssetsDir()
	if err != nil {
		return nil, err
	}
	crds, err := api.CRDs()
	if err != nil {
		return nil, fmt.Errorf("testenv: loading CRDs: %w", err)
	}
	scheme := api.Scheme()
	noExisting := false
	te := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDs:                  crds,
		Scheme:                scheme,
		// Never let USE_EXISTING_CLUSTER point these tests at whatever
		// cluster the current kubeconfig names: they create and delete objects.
		UseExistingCluster:       &noExisting,
		ControlPlaneStartTimeout: startTimeout,
	}
	// The apiserver advertises the machine's address unless told, and
	// its OpenID discovery names that address in jwks_uri: loopback keeps
	// a test's token verifier (MinIO's STS, say) on loopback.
	te.ControlPlane.GetAPIServer().Configure().Set("advertise-address", "127.0.0.1")
	cfg, err := te.Start()
	if err != nil {
		// Start can fail after one of the processes is up; do not leak it.
		_ = te.Stop()
		return nil, fmt.Errorf("testenv: starting control plane from %s: %w", assets, err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		_ = te.Stop()
		return nil, fmt.Errorf("testenv: creating client: %w", err)
	}
	return &Env{Config: cfg, Client: c, Scheme: scheme, env: te}, nil
}

// Stop shuts the control plane down and removes its data directories. It is
// safe to call more than once; later calls return the first result.
func (e *Env) Stop() error {
	e.stopOnce.Do(func() { e.stopErr = e.env.Stop() })
	return e.stopErr
}

// Start is StartEnv for a single test: it fails t if the control plane cannot
// start and also registers the returned stop function with t.Cleanup, so
// calling it is optional.
func Start(t testing.TB) (*rest.Config, client.Client, func()) {
	t.Helper()
	e, err := StartEnv()
	if err != nil {
		t.Fatal(err)
	}
	stop := func() {
		if err := e.Stop(); err != nil {
			t.Errorf("testenv: stopping control plane: %v", err)
		}
	}
	t.Cleanup(stop)
	return e.Config, e.Client, stop
}

// NewNamespace creates a namespace with a generated name starting with prefix
// and returns its name. envtest runs no namespace controller, so deleting a
// namespace never completes: tests isolate themselves with fresh namespaces
// instead of cleaning one up.
func (e *Env) NewNamespace(ctx context.Context, prefix string) (string, error) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}
	if err := e.Client.Create(ctx, ns); err != nil {
		return "", fmt.Errorf("testenv: creating namespace: %w", err)
	}
	return ns.Name, nil
}

// AssetsDir returns the directory holding kube-apiserver and etcd:
// $KUBEBUILDER_ASSETS when set (envtest's own override, which it gives
// precedence anyway), else bin/k8s under the repository root. It fails with
// the make target to run when a binary is missing.
func AssetsDir() (string, error) {
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		root, err := RepoRoot()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(root, "bin", "k8s")
	}
	for _, b := range binaries {
		p := filepath.Join(dir, b)
		fi, err := os.Stat(p)
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return "", fmt.Errorf("testenv: %s is missing or not executable: run `make envtest-bins` "+
				"(builds kube-apiserver and etcd from the Go module proxy into bin/k8s)", p)
		}
	}
	return dir, nil
}

// RepoRoot walks up from the working directory (go test runs each package in
// its own directory) to the directory holding sourceraft's go.mod. Nested
// modules under hack/ have their own go.mod, so the module line is checked
// rather than stopping at the first go.mod found.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && isRootModule(data) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("testenv: no go.mod for module " + rootModule + " above the working directory")
		}
		dir = parent
	}
}

const rootModule = "github.com/sourceraft/sourceraft"

func isRootModule(gomod []byte) bool {
	for line := range strings.Lines(string(gomod)) {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "module" && strings.Trim(f[1], `"`) == rootModule {
			return true
		}
	}
	return false
}

// WriteKubeconfig writes a kubeconfig for a cluster admin of this control
// plane to path, for processes (the real binary) that talk to it.
func (e *Env) WriteKubeconfig(path string) error {
	user, err := e.env.AddUser(envtest.User{Name: "sourceraft", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("testenv: add user: %w", err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return fmt.Errorf("testenv: kubeconfig: %w", err)
	}
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		return fmt.Errorf("testenv: write kubeconfig: %w", err)
	}
	return nil
}
