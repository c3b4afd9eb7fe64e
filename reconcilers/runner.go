package reconcilers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fluxcd/pkg/cache"
	"github.com/fluxcd/pkg/runtime/events"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	"github.com/go-logr/logr"
	"github.com/opencontainers/go-digest"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/sourceraft/sourceraft/api"
	"github.com/sourceraft/sourceraft/storage"
)

// DefaultControllerName is the field owner of status patches and the
// reporting controller of events: Flux's, so that tooling keyed on it
// (flux CLI, notification-controller) treats sourceraft as the
// source-controller it replaces.
const DefaultControllerName = "source-controller"

// Options configure the reconcilers and the manager that runs them.
type Options struct {
	// RestConfig reaches the Kubernetes API.
	RestConfig *rest.Config
	// Scheme defaults to api.Scheme().
	Scheme *runtime.Scheme
	// Storage is where artifacts are stored, listed and collected.
	Storage storage.Storage
	// StorageAdvAddr is the host:port written into artifact URLs.
	StorageAdvAddr string
	// Retention is the TTL and record count kept per object after each new
	// artifact; its Current field is ignored.
	Retention storage.GCPolicy
	// EventsAddr, when set, is the notification-controller address events
	// are also posted to.
	EventsAddr string
	// Concurrent is the number of objects of one kind reconciled at once.
	Concurrent int
	// RequeueDependency is how long an object waiting on another (an
	// include without an artifact) waits before it is retried.
	RequeueDependency time.Duration
	// ArchiveMaxSize and ArchiveMaxEntries bound a source's uncompressed
	// size and its number of files and directories; zero is unbounded.
	ArchiveMaxSize    int64
	ArchiveMaxEntries int
	// OCILayerMaxSize bounds the compressed size of a pulled OCI layer;
	// zero is ArchiveMaxSize when set, else DefaultOCILayerMaxSize.
	OCILayerMaxSize int64
	// HelmIndexMaxSize and HelmChartMaxSize are Flux's
	// --helm-index-max-size and --helm-chart-max-size; zero is Flux's
	// default (helm.DefaultIndexMaxSize, helm.DefaultChartMaxSize in sources/helm).
	HelmIndexMaxSize int64
	HelmChartMaxSize int64
	// DigestAlgorithm is the algorithm of Bucket and HelmRepository
	// revisions, as Flux's --artifact-digest-algo sets it; artifact digests
	// are the Storage's. Default sha256.
	DigestAlgorithm digest.Algorithm
	// ControllerName defaults to DefaultControllerName.
	ControllerName string
	// TokenCache, when set, keeps the tokens of GitHub Apps and cloud
	// providers until 80% of their lifetime; it outlives leadership terms.
	// Nil exchanges credentials on every reconcile.
	TokenCache *cache.TokenCache
	// CatchUp, when set, runs on gaining leadership before the manager
	// starts: it should return once this replica has applied everything
	// earlier leaders committed, so reconcilers see every stored artifact.
	CatchUp func(ctx context.Context) error
	// GracefulShutdownTimeout bounds how long reconciles in flight may run
	// after leadership is lost. Default 10 s.
	GracefulShutdownTimeout time.Duration
	Logger                  *slog.Logger
}

func (o *Options) setDefaults() {
	if o.Scheme == nil {
		o.Scheme = api.Scheme()
	}
	if o.ControllerName == "" {
		o.ControllerName = DefaultControllerName
	}
	if o.DigestAlgorithm == "" {
		o.DigestAlgorithm = digest.SHA256
	}
	if o.Concurrent <= 0 {
		o.Concurrent = 2
	}
	if o.RequeueDependency <= 0 {
		o.RequeueDependency = DefaultRequeueDependency
	}
	if o.GracefulShutdownTimeout <= 0 {
		o.GracefulShutdownTimeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

func (o *Options) validate() error {
	switch {
	case o.RestConfig == nil:
		return errors.New("reconcilers: no Kubernetes REST config")
	case o.Storage == nil:
		return errors.New("reconcilers: no storage")
	case o.StorageAdvAddr == "":
		return errors.New("reconcilers: no storage advertise address for artifact URLs")
	}
	return nil
}

// LeaderRunner runs the reconcilers while this replica is the Raft leader:
// register its OnLeadership with raftstore.Node.OnLeadership before the
// node opens. Gaining leadership starts a controller-runtime manager (cache
// and reconcilers; no leader election, no metrics or health listeners of
// its own) in a goroutine; losing it closes the write gate at once, then
// cancels the manager and waits for it to stop.
type LeaderRunner struct {
	opts Options
	log  *slog.Logger
	// gate is open only while this replica leads; every Kubernetes write
	// of the reconcilers goes through it (leaderclient.go).
	gate atomic.Bool

	// stopMu makes a second Stop wait until the first one finished.
	stopMu sync.Mutex
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
	starts atomic.Int64
}

// NewLeaderRunner checks opts; nothing runs until OnLeadership(true).
func NewLeaderRunner(opts Options) (*LeaderRunner, error) {
	opts.setDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	return &LeaderRunner{opts: opts, log: opts.Logger.With("component", "reconcilers")}, nil
}

// OnLeadership starts the manager when isLeader and it is not running,
// and stops it, waiting, when not.
func (r *LeaderRunner) OnLeadership(isLeader bool) {
	if isLeader {
		r.start()
		return
	}
	r.log.Info("leadership lost")
	r.Stop()
}

// Running reports whether a manager is running or starting.
func (r *LeaderRunner) Running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cancel != nil
}

// Starts counts the managers started so far (tests observe failovers).
func (r *LeaderRunner) Starts() int64 { return r.starts.Load() }

func (r *LeaderRunner) start() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gate.Store(true)
	if r.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel, r.done = cancel, make(chan struct{})
	go r.loop(ctx, r.done)
	r.log.Info("leadership gained: starting reconcilers")
}

// Stop closes the write gate, cancels the manager and waits for it to
// end. It is safe to call at any time, also when not running.
func (r *LeaderRunner) Stop() {
	r.gate.Store(false)
	r.stopMu.Lock()
	defer r.stopMu.Unlock()
	r.mu.Lock()
	cancel, done := r.cancel, r.done
	r.cancel, r.done = nil, nil
	r.mu.Unlock()
	if cancel == nil {
		return
	}
	r.log.Info("stopping reconcilers")
	cancel()
	<-done
	r.log.Info("reconcilers stopped")
}

// loop runs managers until ctx ends, restarting one that fails (an API
// server that is briefly unreachable must not leave the leader idle).
func (r *LeaderRunner) loop(ctx context.Context, done chan struct{}) {
	defer close(done)
	backoff := time.Second
	for {
		err := r.runManager(ctx)
		if ctx.Err() != nil {
			return
		}
		r.log.Error("reconciler manager stopped, restarting", "error", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

func (r *LeaderRunner) runManager(ctx context.Context) error {
	if r.opts.CatchUp != nil {
		if err := r.opts.CatchUp(ctx); err != nil {
			return fmt.Errorf("catch up with the raft log: %w", err)
		}
	}
	log := logr.FromSlogHandler(r.log.Handler())
	mgr, err := ctrl.NewManager(r.opts.RestConfig, ctrl.Options{
		Scheme: r.opts.Scheme,
		Logger: log,
		// sourceraft serves metrics and health itself; this manager runs
		// only while leader, and Raft, not a Lease, decides who leads.
		Metrics:                 metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress:  "0",
		LeaderElection:          false,
		GracefulShutdownTimeout: ptr.To(r.opts.GracefulShutdownTimeout),
		// A new manager is built on every leadership term in this process.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
		// Secrets, ConfigMaps and ServiceAccounts are read on demand, not
		// cached cluster-wide.
		Client: client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}, &corev1.ConfigMap{}, &corev1.ServiceAccount{}}}},
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	recorder, err := events.NewRecorder(mgr, log, r.opts.EventsAddr, r.opts.ControllerName)
	if err != nil {
		return fmt.Errorf("create event recorder: %w", err)
	}
	c := leaderClient{Client: mgr.GetClient(), gate: &r.gate}
	store := &artifactStore{Storage: r.opts.Storage, advAddr: r.opts.StorageAdvAddr, retention: r.opts.Retention}
	n := &notifier{EventRecorder: recorder, controllerName: r.opts.ControllerName}
	git := &GitRepositoryReconciler{
		Client: c, notifier: n, store: store,
		TokenCache:        r.opts.TokenCache,
		ControllerName:    r.opts.ControllerName,
		RequeueDependency: r.opts.RequeueDependency,
		ArchiveMaxSize:    r.opts.ArchiveMaxSize,
		ArchiveMaxEntries: r.opts.ArchiveMaxEntries,
	}
	if err := git.SetupWithManager(mgr, r.opts.Concurrent); err != nil {
		return fmt.Errorf("set up %s reconciler: %w", sourcev1.GitRepositoryKind, err)
	}
	helmRepo := &HelmRepositoryReconciler{
		Client: c, notifier: n, store: store,
		ControllerName:  r.opts.ControllerName,
		IndexMaxSize:    r.opts.HelmIndexMaxSize,
		DigestAlgorithm: r.opts.DigestAlgorithm,
	}
	if err := helmRepo.SetupWithManager(mgr, r.opts.Concurrent); err != nil {
		return fmt.Errorf("set up %s reconciler: %w", sourcev1.HelmRepositoryKind, err)
	}
	helmChart := &HelmChartReconciler{
		Client: c, notifier: n, store: store,
		TokenCache:        r.opts.TokenCache,
		ControllerName:    r.opts.ControllerName,
		RequeueDependency: r.opts.RequeueDependency,
		ArchiveMaxSize:    r.opts.ArchiveMaxSize,
		IndexMaxSize:      r.opts.HelmIndexMaxSize,
		ChartMaxSize:      r.opts.HelmChartMaxSize,
	}
	if err := helmChart.SetupWithManager(ctx, mgr, r.opts.Concurrent); err != nil {
		return fmt.Errorf("set up %s reconciler: %w", sourcev1.HelmChartKind, err)
	}
	oci := &OCIRepositoryReconciler{
		Client: c, notifier: n, store: store,
		TokenCache:        r.opts.TokenCache,
		ControllerName:    r.opts.ControllerName,
		ArchiveMaxSize:    r.opts.ArchiveMaxSize,
		ArchiveMaxEntries: r.opts.ArchiveMaxEntries,
		LayerMaxSize:      r.opts.OCILayerMaxSize,
	}
	if err := oci.SetupWithManager(mgr, r.opts.Concurrent); err != nil {
		return fmt.Errorf("set up %s reconciler: %w", sourcev1.OCIRepositoryKind, err)
	}
	bucket := &BucketReconciler{
		Client: c, notifier: n, store: store,
		TokenCache:        r.opts.TokenCache,
		ControllerName:    r.opts.ControllerName,
		ArchiveMaxSize:    r.opts.ArchiveMaxSize,
		ArchiveMaxEntries: r.opts.ArchiveMaxEntries,
		DigestAlgorithm:   r.opts.DigestAlgorithm,
	}
	if err := bucket.SetupWithManager(mgr, r.opts.Concurrent); err != nil {
		return fmt.Errorf("set up %s reconciler: %w", sourcev1.BucketKind, err)
	}
	r.starts.Add(1)
	return mgr.Start(ctx)
}
