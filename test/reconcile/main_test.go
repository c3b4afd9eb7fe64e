// Package reconcile tests the reconcilers end to end in-process: a real
// kube-apiserver and etcd (envtest), a real single-node raftstore.Node over
// loopback TCP, the real httpapi artifact server over it, and a real
// smart-HTTP Git server (git http-backend). Multi-replica serving is
// covered by test/e2e.
package reconcile

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	eventv1 "github.com/fluxcd/pkg/apis/event/v1beta1"
	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sourceraft/sourceraft/httpapi"
	"github.com/sourceraft/sourceraft/internal/testenv"
	"github.com/sourceraft/sourceraft/raftstore"
	"github.com/sourceraft/sourceraft/reconcilers"
	"github.com/sourceraft/sourceraft/storage"
)

// Limits the reconcilers run with, small enough to test.
const (
	archiveMaxSize    = 256 << 10
	archiveMaxEntries = 500
)

var (
	env       *testenv.Env
	node      *raftstore.Node
	runner    *reconcilers.LeaderRunner
	gitSrv    *gitServer
	advAddr   string // host:port of the artifact server
	eventSink *eventReceiver
)

func TestMain(m *testing.M) {
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(code)
}

func run(m *testing.M) (int, error) {
	// Failures are expected by most tests and retried with backoff, so the
	// reconcilers' logs go to stderr only when asked for.
	var logOut io.Writer = io.Discard
	if os.Getenv("RECONCILE_TEST_LOG") != "" {
		logOut = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctrl.SetLogger(logr.FromSlogHandler(log.Handler()))

	var err error
	if env, err = testenv.StartEnv(); err != nil {
		return 0, err
	}
	defer env.Stop()

	if gitSrv, err = startGitServer(); err != nil {
		return 0, err
	}
	defer gitSrv.Close()
	eventSink = newEventReceiver()
	defer eventSink.srv.Close()

	dir, err := os.MkdirTemp("", "reconcile-node-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	raftAddr, err := freeAddr()
	if err != nil {
		return 0, err
	}

	// The artifact server is bound first: its address goes into the URLs.
	node = raftstore.New(raftstore.Config{
		NodeID: "n0", Dir: dir, RaftBind: raftAddr,
		Peers:    []raftstore.Peer{{ID: "n0", RaftAddr: raftAddr}},
		Insecure: true, NoSync: true,
		HeartbeatTimeout: 300 * time.Millisecond, ElectionTimeout: 300 * time.Millisecond,
		MaxArtifactSize: 64 << 20,
		Logger:          log,
	})
	srv := httpapi.NewServer(httpapi.Listener{Name: "artifacts", Addr: "127.0.0.1:0",
		Handler: httpapi.NewArtifactServer(httpapi.Config{Backend: node, Logger: log})})
	srv.Logger = log
	if err := srv.Listen(); err != nil {
		return 0, err
	}
	advAddr = srv.Addr("artifacts")
	ctx, stopServer := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Run(ctx) }()
	defer func() { stopServer(); <-served }()

	runner, err = reconcilers.NewLeaderRunner(reconcilers.Options{
		RestConfig:        env.Config,
		Storage:           node,
		StorageAdvAddr:    advAddr,
		Retention:         storage.GCPolicy{TTL: time.Hour, Records: 2},
		EventsAddr:        eventSink.srv.URL,
		Concurrent:        4,
		RequeueDependency: time.Second,
		ArchiveMaxSize:    archiveMaxSize,
		ArchiveMaxEntries: archiveMaxEntries,
		CatchUp: func(context.Context) error {
			return node.WaitForAppliedIndex(node.Status().LastIndex, time.Minute)
		},
		Logger: log,
	})
	if err != nil {
		return 0, err
	}
	node.OnLeadership(runner.OnLeadership)
	if err := node.Open(); err != nil {
		return 0, err
	}
	defer node.Close()
	defer runner.Stop()
	if _, err := node.WaitForLeader(30 * time.Second); err != nil {
		return 0, err
	}
	return m.Run(), nil
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// eventReceiver stands in for the notification-controller's event
// endpoint: it records every event the reconcilers forward.
type eventReceiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	events []eventv1.Event
}

func newEventReceiver() *eventReceiver {
	e := &eventReceiver{}
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev eventv1.Event
		if err := json.NewDecoder(r.Body).Decode(&ev); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		e.mu.Lock()
		e.events = append(e.events, ev)
		e.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	return e
}

// find returns the forwarded events about the named object with reason.
func (e *eventReceiver) find(ns, name, reason string) []eventv1.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []eventv1.Event
	for _, ev := range e.events {
		if ev.InvolvedObject.Namespace == ns && ev.InvolvedObject.Name == name && ev.Reason == reason {
			out = append(out, ev)
		}
	}
	return out
}

// newNamespace gives a test its own namespace.
func newNamespace(t *testing.T) string {
	t.Helper()
	ns, err := env.NewNamespace(context.Background(), "git")
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

// newGitRepository creates a GitRepository with a long interval, so that
// only spec changes and requestedAt annotations trigger reconciles.
func newGitRepository(t *testing.T, ns, name, url string, mutate func(*sourcev1.GitRepository)) *sourcev1.GitRepository {
	t.Helper()
	obj := &sourcev1.GitRepository{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: sourcev1.GitRepositorySpec{
			URL:      url,
			Interval: metav1.Duration{Duration: time.Hour},
			Timeout:  &metav1.Duration{Duration: 20 * time.Second},
		},
	}
	if mutate != nil {
		mutate(obj)
	}
	if err := env.Client.Create(context.Background(), obj); err != nil {
		t.Fatal(err)
	}
	return obj
}

func getGitRepository(t *testing.T, ns, name string) *sourcev1.GitRepository {
	t.Helper()
	obj := &sourcev1.GitRepository{}
	if err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, obj); err != nil {
		t.Fatal(err)
	}
	return obj
}

// waitFor polls the object until cond holds, failing with the last status
// after timeout.
func waitFor(t *testing.T, ns, name string, timeout time.Duration, what string, cond func(*sourcev1.GitRepository) bool) *sourcev1.GitRepository {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		obj := getGitRepository(t, ns, name)
		if cond(obj) {
			return obj
		}
		if time.Now().After(deadline) {
			st, _ := json.MarshalIndent(obj.Status, "", "  ")
			t.Fatalf("%s/%s: timed out waiting for %s; status:\n%s", ns, name, what, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// readyAt waits until the object is Ready for its current generation with
// an artifact of revision (any revision if empty).
func readyAt(t *testing.T, ns, name, revision string) *sourcev1.GitRepository {
	t.Helper()
	return waitFor(t, ns, name, 60*time.Second, "Ready with revision "+revision, func(o *sourcev1.GitRepository) bool {
		return conditions.IsReady(o) && o.Status.ObservedGeneration == o.Generation && o.Status.Artifact != nil &&
			(revision == "" || o.Status.Artifact.Revision == revision)
	})
}

// failedWith waits until condition cond is True with reason and Ready
// is False: the end of a failed reconcile, not a progress patch of a
// retry that still carries the failure of the previous attempt.
func failedWith(t *testing.T, ns, name, cond, reason string) *sourcev1.GitRepository {
	t.Helper()
	return waitFor(t, ns, name, 60*time.Second, cond+"="+reason+" and Ready=False", func(o *sourcev1.GitRepository) bool {
		return conditions.IsTrue(o, cond) && conditions.GetReason(o, cond) == reason && conditions.IsFalse(o, meta.ReadyCondition)
	})
}

// requestReconcile sets the reconcile.fluxcd.io/requestedAt annotation to
// a new value and returns it.
func requestReconcile(t *testing.T, ns, name string) string {
	t.Helper()
	value := time.Now().Format(time.RFC3339Nano)
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, meta.ReconcileRequestAnnotation, value)
	obj := &sourcev1.GitRepository{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := env.Client.Patch(context.Background(), obj, client.RawPatch(types.MergePatchType, []byte(patch))); err != nil {
		t.Fatal(err)
	}
	return value
}

// download fetches an artifact URL and checks its digest and size
// against the status.
func download(t *testing.T, a *meta.Artifact) []byte {
	t.Helper()
	resp, err := http.Get(a.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", a.URL, resp.Status, body)
	}
	sum := sha256.Sum256(body)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != a.Digest {
		t.Fatalf("GET %s: digest %s, status says %s", a.URL, got, a.Digest)
	}
	if a.Size == nil || *a.Size != int64(len(body)) {
		t.Fatalf("GET %s: %d bytes, status says %v", a.URL, len(body), a.Size)
	}
	return body
}

// storedArtifacts lists what the store holds for the object.
func storedArtifacts(t *testing.T, ns, name string) []storage.Artifact {
	t.Helper()
	arts, err := node.List(context.Background(), storage.Filter{Kind: "gitrepository", Namespace: ns, Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return arts
}

// conditionMessage returns the message of a condition, for assertions.
func conditionMessage(o *sourcev1.GitRepository, cond string) string {
	return conditions.GetMessage(o, cond)
}
