// Package reconcile tests the reconcilers end to end in-process: a real
// kube-apiserver and etcd (envtest), a real 3-voter raftstore cluster over
// loopback TCP with the real httpapi artifact server on each replica, and
// real Git, Helm, OCI and S3 servers. Artifacts are fetched from every
// replica. The process boundaries, kills and partitions are test/e2e's and
// test/chaos's.
package reconcile

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	eventv1 "github.com/fluxcd/pkg/apis/event/v1beta1"
	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/auth"
	"github.com/fluxcd/pkg/cache"
	"github.com/fluxcd/pkg/runtime/conditions"
	"github.com/fluxcd/pkg/runtime/object"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/httpapi"
	"github.com/sourceraft/sourceraft/internal/cloudnet"
	"github.com/sourceraft/sourceraft/internal/freeport"
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
	env     *testenv.Env
	node    *raftstore.Node
	runner  *reconcilers.LeaderRunner
	gitSrv  *gitServer
	advAddr string // host:port of the leader's artifact server
	// replicaAddrs are every replica's artifact servers, the leader's first.
	replicaAddrs []string
	eventSink    *eventReceiver
	// cloud carries cloud providers' host names to their stand-ins.
	cloud *cloudnet.Net
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
	// Before anything makes an HTTP client: the process's proxy and roots
	// are read once.
	cloudDir, err := os.MkdirTemp("", "reconcile-cloud-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(cloudDir)
	if cloud, err = cloudnet.Start(cloudDir); err != nil {
		return 0, err
	}
	defer cloud.Close()
	if err := cloud.UseForProcess(); err != nil {
		return 0, err
	}

	// Failures are expected by most tests and retried with backoff, so the
	// reconcilers' logs go to stderr only when asked for.
	var logOut io.Writer = io.Discard
	if os.Getenv("RECONCILE_TEST_LOG") != "" {
		logOut = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctrl.SetLogger(logr.FromSlogHandler(log.Handler()))

	if env, err = testenv.StartEnv(); err != nil {
		return 0, err
	}
	defer env.Stop()

	stopGCP, err := startGCP()
	defer stopGCP()
	if err != nil {
		return 0, err
	}

	if gitSrv, err = startGitServer(); err != nil {
		return 0, err
	}
	defer gitSrv.Close()
	if err := startAzure(); err != nil {
		return 0, err
	}
	stopECRAndACR, err := startECRAndACR()
	defer stopECRAndACR()
	if err != nil {
		return 0, err
	}
	eventSink = newEventReceiver()
	defer eventSink.srv.Close()

	dir, err := os.MkdirTemp("", "reconcile-node-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	// Three voters. n0 reconciles: it runs the reconcilers and its artifact
	// server's address goes into the URLs. The others wait far longer
	// before they stand for election, so n0 wins the first one and keeps
	// leading.
	peers := make([]clusterapi.Peer, 3)
	for i := range peers {
		addr, err := freeport.Addr()
		if err != nil {
			return 0, err
		}
		peers[i] = clusterapi.Peer{ID: fmt.Sprintf("n%d", i), RaftAddr: addr}
	}
	ctx, stopServers := context.WithCancel(context.Background())
	defer stopServers()
	replicas := make([]*raftstore.Node, len(peers))
	for i, p := range peers {
		timeout := 300 * time.Millisecond
		if i > 0 {
			timeout = 10 * time.Second
		}
		nd, addr, stop, err := startReplica(ctx, p, peers, timeout, dir, log)
		if err != nil {
			return 0, err
		}
		defer stop()
		replicas[i] = nd
		replicaAddrs = append(replicaAddrs, addr)
	}
	node, advAddr = replicas[0], replicaAddrs[0]

	// As --feature-gates=ObjectLevelWorkloadIdentity=true: the cloud
	// tests authenticate as ServiceAccounts of their namespaces.
	auth.EnableObjectLevelWorkloadIdentity()
	tokens, err := cache.NewTokenCache(100)
	if err != nil {
		return 0, err
	}
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
		TokenCache:        tokens,
		CatchUp: func(context.Context) error {
			return node.Barrier(time.Minute)
		},
		Logger: log,
	})
	if err != nil {
		return 0, err
	}
	node.OnLeadership(runner.OnLeadership)
	for _, nd := range replicas {
		if err := nd.Open(); err != nil {
			return 0, err
		}
		defer nd.Close()
	}
	defer runner.Stop()
	if id, err := node.WaitForLeader(30 * time.Second); err != nil || id != "n0" {
		return 0, fmt.Errorf("leader %q (%v), want n0, the replica that reconciles", id, err)
	}
	// A replica serves what it has not applied yet from a peer: the
	// followers' artifact addresses are registered through the leader
	// (they have no internal API to register themselves).
	for i, p := range peers[1:] {
		p.StorageAddr = replicaAddrs[i+1]
		if err := node.RegisterPeer(ctx, p); err != nil {
			return 0, fmt.Errorf("register %s: %w", p.ID, err)
		}
	}
	var voters []string
	for _, p := range node.Status().Peers {
		if p.Suffrage == "Voter" {
			voters = append(voters, p.ID)
		}
	}
	if len(voters) != 3 {
		return 0, fmt.Errorf("voters %v, want n0, n1 and n2", voters)
	}
	return m.Run(), nil
}

// startReplica prepares a voter of the bootstrap set peers with its own
// store under dir and starts its artifact server; Open starts Raft.
func startReplica(ctx context.Context, self clusterapi.Peer, peers []clusterapi.Peer, timeout time.Duration, dir string, log *slog.Logger) (*raftstore.Node, string, func(), error) {
	// The artifact address is chosen first: a leader registers its own.
	storageAddr, err := freeport.Addr()
	if err != nil {
		return nil, "", nil, err
	}
	nd := raftstore.New(raftstore.Config{
		NodeID: self.ID, Dir: filepath.Join(dir, self.ID), RaftBind: self.RaftAddr, Peers: peers,
		StorageAddr: storageAddr, Insecure: true, NoSync: true,
		HeartbeatTimeout: timeout, ElectionTimeout: timeout,
		MaxArtifactSize: 64 << 20,
		Logger:          log.With("node", self.ID),
	})
	srv := httpapi.NewServer(httpapi.Listener{Name: "artifacts", Addr: storageAddr,
		Handler: httpapi.NewArtifactServer(httpapi.Config{Backend: nd, Logger: log})})
	srv.Logger = log
	if err := srv.Listen(); err != nil {
		return nil, "", nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Run(sctx) }()
	return nd, srv.Addr("artifacts"), func() { cancel(); <-served }, nil
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

// await waits up to timeout for events about the named object with
// reason and returns them, failing when none reached the events address.
func (e *eventReceiver) await(t *testing.T, ns, name, reason string, timeout time.Duration) []eventv1.Event {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for len(e.find(ns, name, reason)) == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	evs := e.find(ns, name, reason)
	if len(evs) == 0 {
		t.Fatalf("no %s event reached the events address", reason)
	}
	return evs
}

// newNamespace gives a test its own namespace.
func newNamespace(t *testing.T) string {
	t.Helper()
	return namespaceFor(t, "git")
}

// namespaceFor gives a test its own namespace, named after prefix.
func namespaceFor(t *testing.T, prefix string) string {
	t.Helper()
	ns, err := env.NewNamespace(context.Background(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

// createObject creates obj once mutate, when set, has adjusted it.
func createObject[T client.Object](t *testing.T, obj T, mutate func(T)) T {
	t.Helper()
	if mutate != nil {
		mutate(obj)
	}
	if err := env.Client.Create(context.Background(), obj); err != nil {
		t.Fatal(err)
	}
	return obj
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
	return createObject(t, obj, mutate)
}

// sourceObject is what the waits need of a Flux source object.
type sourceObject interface {
	conditions.Getter
	GetArtifact() *meta.Artifact
}

// newObject is an empty object of type T (a pointer to a struct) named
// ns/name.
func newObject[T client.Object](ns, name string) T {
	obj := reflect.New(reflect.TypeFor[T]().Elem()).Interface().(T)
	obj.SetNamespace(ns)
	obj.SetName(name)
	return obj
}

// getObject reads the object ns/name of type T.
func getObject[T client.Object](t *testing.T, ns, name string) T {
	t.Helper()
	obj := newObject[T](ns, name)
	if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(obj), obj); err != nil {
		t.Fatal(err)
	}
	return obj
}

// waitForObject polls the object ns/name of type T, read afresh each
// time, until cond holds, failing with its last status after timeout.
func waitForObject[T client.Object](t *testing.T, ns, name string, timeout time.Duration, what string, cond func(T) bool) T {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		obj := getObject[T](t, ns, name)
		if cond(obj) {
			return obj
		}
		if time.Now().After(deadline) {
			var fields map[string]json.RawMessage
			b, _ := json.Marshal(obj)
			_ = json.Unmarshal(b, &fields)
			st, _ := json.MarshalIndent(fields["status"], "", "  ")
			t.Fatalf("%s/%s: timed out waiting for %s; status:\n%s", ns, name, what, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitReady waits until the object is Ready for its current generation
// with an artifact of revision (any revision if empty).
func waitReady[T sourceObject](t *testing.T, ns, name, revision string) T {
	t.Helper()
	return waitForObject(t, ns, name, 60*time.Second, "Ready with revision "+revision, func(o T) bool {
		observed, err := object.GetStatusObservedGeneration(o)
		return err == nil && conditions.IsReady(o) && observed == o.GetGeneration() && o.GetArtifact() != nil &&
			(revision == "" || o.GetArtifact().Revision == revision)
	})
}

// waitFailed waits until condition cond is True with reason and Ready
// is False: the end of a failed reconcile, not a progress patch of a
// retry that still carries the failure of the previous attempt.
func waitFailed[T sourceObject](t *testing.T, ns, name, cond, reason string) T {
	t.Helper()
	return waitForObject(t, ns, name, 60*time.Second, cond+"="+reason+" and Ready=False", func(o T) bool {
		return conditions.IsTrue(o, cond) && conditions.GetReason(o, cond) == reason && conditions.IsFalse(o, meta.ReadyCondition)
	})
}

// requestReconcileOf sets the reconcile.fluxcd.io/requestedAt annotation
// of the object ns/name of type T to a new value and returns it.
func requestReconcileOf[T client.Object](t *testing.T, ns, name string) string {
	t.Helper()
	value := time.Now().Format(time.RFC3339Nano)
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, meta.ReconcileRequestAnnotation, value)
	if err := env.Client.Patch(context.Background(), newObject[T](ns, name), client.RawPatch(types.MergePatchType, []byte(patch))); err != nil {
		t.Fatal(err)
	}
	return value
}

// storedOf lists what the store holds for the object ns/name of type T
// (whose type name, lower-cased, is the artifacts' kind).
func storedOf[T client.Object](t *testing.T, ns, name string) []storage.Artifact {
	t.Helper()
	kind := strings.ToLower(reflect.TypeFor[T]().Elem().Name())
	arts, err := node.List(context.Background(), storage.Filter{Kind: kind, Namespace: ns, Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return arts
}

// storedAfterGC waits until the store holds want artifacts for the object
// ns/name and returns them, or the last list after 15 s: retention is
// applied right after the status names a new artifact, so it may land
// just after the object turns Ready.
func storedAfterGC[T client.Object](t *testing.T, ns, name string, want int) []storage.Artifact {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		arts := storedOf[T](t, ns, name)
		if len(arts) == want || time.Now().After(deadline) {
			return arts
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// deleteAndWait deletes obj and waits until it is gone, its finalizer
// removed once the reconciler deleted its artifacts.
func deleteAndWait(t *testing.T, obj client.Object) {
	t.Helper()
	if err := env.Client.Delete(context.Background(), obj); err != nil {
		t.Fatal(err)
	}
	key := client.ObjectKeyFromObject(obj)
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := env.Client.Get(context.Background(), key, obj.DeepCopyObject().(client.Object))
		if apierrors.IsNotFound(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s %s not deleted: %v", reflect.TypeOf(obj).Elem().Name(), key, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// updateSpec applies mutate to the newest version of obj and updates it,
// again on a conflict: the reconciler patches status between a test's read
// and its write.
func updateSpec[T client.Object](t *testing.T, obj T, mutate func(T)) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(obj), obj); err != nil {
			return err
		}
		mutate(obj)
		return env.Client.Update(context.Background(), obj)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The GitRepository forms of the generic helpers.
var (
	getGitRepository = getObject[*sourcev1.GitRepository]
	waitFor          = waitForObject[*sourcev1.GitRepository]
	readyAt          = waitReady[*sourcev1.GitRepository]
	failedWith       = waitFailed[*sourcev1.GitRepository]
	requestReconcile = requestReconcileOf[*sourcev1.GitRepository]
	storedArtifacts  = storedOf[*sourcev1.GitRepository]
)

// download GETs the artifact by its URL and from every replica's artifact
// server, by its path and by its object's alias (the artifact must be the
// object's current one), checks each body against the status digest and
// size, and returns the bytes. Flux's ArchiveFetcher
// (fetchFromEveryReplica) cannot take what is not a tarball, such as a
// HelmRepository's index.
func download(t *testing.T, a *meta.Artifact) []byte {
	t.Helper()
	urls := []string{a.URL}
	for _, addr := range replicaAddrs {
		urls = append(urls, "http://"+addr+"/"+a.Path, "http://"+addr+"/"+aliasPath(a))
	}
	var first []byte
	for i, u := range urls {
		body := get(t, u)
		sum := sha256.Sum256(body)
		if got := "sha256:" + hex.EncodeToString(sum[:]); got != a.Digest {
			t.Fatalf("GET %s: digest %s, status says %s", u, got, a.Digest)
		}
		if a.Size == nil || *a.Size != int64(len(body)) {
			t.Fatalf("GET %s: %d bytes, status says %v", u, len(body), a.Size)
		}
		if i == 0 {
			first = body
		}
	}
	return first
}

// aliasPath is where every replica serves the object's current artifact:
// latest.tar.gz beside it, index.yaml for a HelmRepository.
func aliasPath(a *meta.Artifact) string {
	kind, _, _ := strings.Cut(a.Path, "/")
	return a.Path[:strings.LastIndexByte(a.Path, '/')+1] + storage.AliasFile(kind)
}

// aliasURL is the status.url Flux sets beside artifact a.
func aliasURL(a *meta.Artifact) string { return "http://" + advAddr + "/" + aliasPath(a) }

func get(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, body)
	}
	return body
}

// conditionMessage returns the message of a condition, for assertions.
func conditionMessage(o *sourcev1.GitRepository, cond string) string {
	return conditions.GetMessage(o, cond)
}
