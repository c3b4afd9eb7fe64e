// Command source-controller is sourceraft: a replicated, highly available
// Flux source-controller. This file holds flags and wiring only.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fluxcd/pkg/auth"
	"github.com/fluxcd/pkg/cache"
	"github.com/go-logr/logr"
	// The image (make image) has no /etc/ssl/certs: its base holds only
	// /etc/passwd, /etc/group and /tmp. This bundles Mozilla's roots into the
	// binary and is consulted only when the system has none, so HTTPS Git,
	// Helm, OCI and S3 sources verify in the image as they do on a host.
	_ "golang.org/x/crypto/x509roots/fallback"
	ctrl "sigs.k8s.io/controller-runtime"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/client/config"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/httpapi"
	"github.com/sourceraft/sourceraft/identity"
	"github.com/sourceraft/sourceraft/metrics"
	"github.com/sourceraft/sourceraft/raftstore"
	"github.com/sourceraft/sourceraft/reconcilers"
	"github.com/sourceraft/sourceraft/sources/helm"
	"github.com/sourceraft/sourceraft/storage"
)

type options struct {
	nodeID, raftAddr, raftAdvAddr, peers, storagePath   string
	storageAddr, storageAdvAddr, storagePeerAddr        string
	healthAddr, metricsAddr, apiAddr, apiAdvAddr        string
	apiTokenFile, tlsCert, tlsKey, tlsCA, tlsServerName string
	insecure, reconcile, pprof                          bool
	retentionTTL, gcInterval                            time.Duration
	retentionRecords                                    int
	maxArtifactSize, snapshotBytes, scrubRate           int64
	logLevel, raftLogStore, digestAlgo                  string
	limits                                              httpapi.Limits

	// StatefulSet identity (package identity).
	replicas       int
	peerDNS        string
	peerDNSTimeout time.Duration

	// Membership (raftstore/membership.go).
	join              string
	stabilizationTime time.Duration
	deadServerTimeout time.Duration

	// Reconciler flags, Flux's where Flux has one.
	eventsAddr         string
	concurrent         int
	requeueDependency  time.Duration
	sourceMaxSize      int64
	sourceMaxEntries   int
	reconcileGraceTime time.Duration
	helmIndexMaxSize   int64
	helmChartMaxSize   int64
	tokenCacheMaxSize  int
	featureGates       string
	defaultSA          string

	blobs blobFlags
}

func main() {
	// In a StatefulSet the hostname is the pod name; POD_NAME (from the
	// downward API) says so explicitly.
	nodeID := os.Getenv("POD_NAME")
	if nodeID == "" {
		nodeID, _ = os.Hostname()
	}
	var o options
	flag.StringVar(&o.nodeID, "node-id", nodeID, "Raft node id; in a StatefulSet the pod name (default $POD_NAME, else the hostname).")
	flag.StringVar(&o.raftAddr, "raft-addr", ":7000", "Address the Raft transport listens on.")
	flag.StringVar(&o.raftAdvAddr, "raft-advertise-addr", "", "Address peers dial for Raft (default: this pod's --peer-dns address, else --raft-addr with the node id as host).")
	flag.StringVar(&o.peers, "peers", "", "Bootstrap voters: id=host:port,... including this node; wins over --replicas.")
	flag.IntVar(&o.replicas, "replicas", 0, "StatefulSet size the cluster is bootstrapped with: voters <set>-0..<set>-(N-1) derived from --node-id <set>-<ordinal> and --peer-dns.")
	flag.StringVar(&o.peerDNS, "peer-dns", "", "Raft address pattern of a pod, {id} the pod name, {ordinal} its ordinal, e.g. {id}.source-controller-peers.flux-system.svc.cluster.local.:7000; also this node's advertise address.")
	flag.DurationVar(&o.peerDNSTimeout, "peer-dns-timeout", 2*time.Minute, "With --peer-dns, how long to wait at start for this pod's own DNS name to resolve.")
	flag.StringVar(&o.join, "join", "", "Internal API addresses (host:port,...) a replica without Raft state asks to join an existing cluster (default with --replicas: the pods of the bootstrap set at --peer-dns host and --api-addr port).")
	flag.DurationVar(&o.stabilizationTime, "raft-server-stabilization-time", 10*time.Second, "How long a caught-up non-voter stays healthy before it is promoted to voter.")
	flag.DurationVar(&o.deadServerTimeout, "raft-dead-server-timeout", 5*time.Minute, "How long a server may stay unreachable before the leader removes it from Raft (never below 3 voters); 0 disables.")
	flag.StringVar(&o.storagePath, "storage-path", "/data", "Directory of the Raft log, snapshots and artifact database.")
	flag.StringVar(&o.storageAddr, "storage-addr", ":9090", "Address the artifact server listens on.")
	flag.StringVar(&o.storageAdvAddr, "storage-adv-addr", "", "Host:port written into artifact URLs (the Service address).")
	flag.StringVar(&o.storagePeerAddr, "storage-peer-addr", "", "This replica's own artifact address for peers (default: Raft advertise host, --storage-addr port).")
	flag.StringVar(&o.healthAddr, "health-addr", ":9440", "Address of /healthz and /readyz.")
	flag.StringVar(&o.metricsAddr, "metrics-addr", ":8080", "Address of /metrics.")
	flag.BoolVar(&o.pprof, "pprof", false, "Also serve Go's runtime profiles (/debug/pprof/) on --metrics-addr.")
	flag.StringVar(&o.apiAddr, "api-addr", ":9091", "Address of the internal API.")
	flag.StringVar(&o.apiAdvAddr, "api-advertise-addr", "", "This replica's internal API address for peers (default: Raft advertise host, --api-addr port).")
	flag.StringVar(&o.apiTokenFile, "api-token-file", "", "File holding the internal API bearer token; without it the internal API refuses every request.")
	flag.StringVar(&o.tlsCert, "raft-tls-cert", "", "PEM certificate this node presents to peers.")
	flag.StringVar(&o.tlsKey, "raft-tls-key", "", "PEM key of --raft-tls-cert.")
	flag.StringVar(&o.tlsCA, "raft-tls-ca", "", "PEM CA that peer certificates must chain to.")
	flag.StringVar(&o.tlsServerName, "raft-tls-server-name", "", "Name checked in peer certificates (default: the dialed host).")
	flag.BoolVar(&o.insecure, "raft-insecure", false, "Run the Raft transport without TLS. Never in production.")
	flag.BoolVar(&o.reconcile, "reconcile", false, "Reconcile Flux sources while leader; false stores and serves only.")
	flag.DurationVar(&o.retentionTTL, "artifact-retention-ttl", 60*time.Second, "How long superseded artifacts are kept.")
	flag.IntVar(&o.retentionRecords, "artifact-retention-records", 2, "How many artifacts per source are kept, the current one included.")
	flag.DurationVar(&o.gcInterval, "gc-interval", time.Minute, "How often the leader collects garbage across all sources (0 disables).")
	flag.StringVar(&o.digestAlgo, "artifact-digest-algo", "sha256", "The algorithm of every new artifact's digest (status.artifact.digest), as Flux's: sha1, sha256, sha384, sha512 or blake3. Blobs stay addressed by sha256.")
	flag.Int64Var(&o.maxArtifactSize, "max-artifact-size", 1<<30, "Largest artifact accepted, in bytes.")
	flag.Int64Var(&o.scrubRate, "scrub-rate", 16<<20, "Bytes per second the background scrub reads to check blob files against their digests (corrupt ones are repaired from a peer); 0 disables.")
	flag.Int64Var(&o.snapshotBytes, "raft-snapshot-bytes", 64<<20, "Log bytes that trigger a Raft snapshot.")
	flag.IntVar(&o.limits.MaxConnections, "max-connections", 1024, "Connections open at once on the artifact listener, and again on the internal API; beyond it a new connection is answered 503 (0: unbounded).")
	flag.DurationVar(&o.limits.WriteIdleTimeout, "write-idle-timeout", 30*time.Second, "Cut a connection whose client takes less than 1 KiB of a response in this long; renewed while it makes progress (0: never).")
	flag.DurationVar(&o.limits.ReadIdleTimeout, "read-idle-timeout", 30*time.Second, "Cut a request body that sends less than 1 KiB in this long; renewed while it makes progress; also bounds request headers (at most 10s) (0: no body limit).")
	flag.IntVar(&o.limits.MaxRanges, "max-ranges", 16, "Most ranges one Range header may ask for; with more the whole artifact is served with 200 (0: unbounded).")
	flag.StringVar(&o.raftLogStore, "raft-log-store", raftstore.LogStoreWAL, "Where the Raft log lives: wal (append-only segment files) or boltdb (raft.db, as earlier releases); a log found in the other store is moved over once at start.")
	flag.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error.")
	// --kubeconfig is registered by controller-runtime (its client config
	// package); without it the in-cluster config or $KUBECONFIG is used.
	flag.StringVar(&o.eventsAddr, "events-addr", "", "The address of the events receiver (notification-controller); empty records Kubernetes events only.")
	flag.IntVar(&o.concurrent, "concurrent", 2, "The number of concurrent reconciles per kind.")
	flag.DurationVar(&o.requeueDependency, "requeue-dependency", 30*time.Second, "The interval at which failing dependencies are reevaluated.")
	flag.Int64Var(&o.sourceMaxSize, "source-max-size", 1<<30, "Largest uncompressed source (sum of file sizes) archived into an artifact, in bytes; 0 is unbounded.")
	flag.IntVar(&o.sourceMaxEntries, "source-max-entries", 100000, "Most files and directories archived into one artifact; 0 is unbounded.")
	flag.DurationVar(&o.reconcileGraceTime, "reconcile-shutdown-timeout", 10*time.Second, "How long reconciles in flight may finish after leadership is lost.")
	flag.Int64Var(&o.helmIndexMaxSize, "helm-index-max-size", helm.DefaultIndexMaxSize, "The max allowed size in bytes of a HelmRepository index file.")
	flag.Int64Var(&o.helmChartMaxSize, "helm-chart-max-size", helm.DefaultChartMaxSize, "The max allowed size in bytes of a HelmChart artifact.")
	flag.IntVar(&o.tokenCacheMaxSize, "token-cache-max-size", 100, "The maximum number of tokens (GitHub App installation tokens, cloud provider credentials) kept until 80% of their lifetime; 0 disables the cache.")
	flag.StringVar(&o.featureGates, "feature-gates", "", "Comma-separated Name=true|false pairs. Supported: "+auth.FeatureGateObjectLevelWorkloadIdentity+" (default false): spec.serviceAccountName authenticates to cloud providers as that ServiceAccount.")
	flag.StringVar(&o.defaultSA, "default-service-account", "", "ServiceAccount of an object's namespace that cloud provider authentication uses when the object names none (multi-tenancy lockdown); needs "+auth.FeatureGateObjectLevelWorkloadIdentity+".")
	o.blobs.register(flag.CommandLine)
	flag.Parse()

	log := newLogger(o.logLevel)
	slog.SetDefault(log)
	if err := run(o, log); err != nil {
		log.Error("source-controller stopped", "error", err)
		os.Exit(1)
	}
}

func run(o options, log *slog.Logger) error {
	digestAlgo, err := storage.DigestAlgorithm(o.digestAlgo)
	if err != nil {
		return fmt.Errorf("--artifact-digest-algo: %w", err)
	}
	id, err := identity.Derive(identity.Flags{
		NodeID: o.nodeID, Peers: o.peers, Replicas: o.replicas, PeerDNS: o.peerDNS,
		RaftAddr: o.raftAddr, Advertise: o.raftAdvAddr, APIAddr: o.apiAddr, Join: o.join,
	})
	if err != nil {
		return err
	}
	peers, raftAdv, join := id.Peers, id.Advertise, id.Join
	if o.peerDNS != "" && o.raftAdvAddr == "" {
		if err := identity.WaitForDNS(context.Background(), raftAdv, o.peerDNSTimeout); err != nil {
			return fmt.Errorf("--peer-dns: %w", err)
		}
	}
	token, err := readToken(o.apiTokenFile)
	if err != nil {
		return err
	}
	cfg := raftstore.Config{
		NodeID: o.nodeID, Dir: o.storagePath, RaftBind: o.raftAddr, RaftAdvertise: raftAdv, Peers: peers,
		Insecure: o.insecure, APIToken: token,
		APIAddr:         orDefault(o.apiAdvAddr, withHost(o.apiAddr, hostOf(raftAdv))),
		StorageAddr:     orDefault(o.storagePeerAddr, withHost(o.storageAddr, hostOf(raftAdv))),
		MaxArtifactSize: o.maxArtifactSize, SnapshotBytes: o.snapshotBytes, LogStore: o.raftLogStore,
		Retention:  storage.GCPolicy{TTL: o.retentionTTL, Records: o.retentionRecords},
		GCInterval: o.gcInterval,
		Join:       join, ServerStabilizationTime: o.stabilizationTime, DeadServerTimeout: o.deadServerTimeout,
		DigestAlgorithm: digestAlgo, Logger: log,
	}
	if o.tlsCert != "" || o.tlsKey != "" || o.tlsCA != "" {
		cfg.TLS = &raftstore.TLSFiles{CertFile: o.tlsCert, KeyFile: o.tlsKey, CAFile: o.tlsCA, ServerName: o.tlsServerName}
	}
	startCtx, cancelStart := context.WithTimeout(context.Background(), time.Minute)
	cfg.Blobs, err = o.blobs.open(startCtx, o.storagePath)
	cancelStart()
	if err != nil {
		return err
	}
	cfg.Presign = o.blobs.presign
	node := raftstore.New(cfg)
	if o.reconcile {
		runner, err := newRunner(o, node, orDefault(o.storageAdvAddr, cfg.StorageAddr), cfg, log)
		if err != nil {
			return err
		}
		// Registered before Open so no leadership change is missed; stopped
		// before the node closes (defers run in reverse).
		node.OnLeadership(runner.OnLeadership)
		defer runner.Stop()
	}
	if err := node.Open(); err != nil {
		return err
	}
	defer node.Close()
	metrics.StorageBackend.WithLabelValues(o.blobs.backend).Set(1)
	if err := metrics.RegisterRaft(func() metrics.RaftState {
		st := node.Status()
		return metrics.RaftState{Term: st.Term, AppliedIndex: st.AppliedIndex, CommitIndex: st.CommitIndex,
			LastIndex: st.LastIndex, Leader: st.State == "Leader", HasLeader: st.LeaderID != ""}
	}); err != nil {
		return fmt.Errorf("register raft metrics: %w", err)
	}

	hcfg := httpapi.Config{Backend: node, APIToken: token, MaxArtifactSize: o.maxArtifactSize, StorageAdvAddr: o.storageAdvAddr, Logger: log}
	// Probes and scrapes must get through a flood of artifact
	// connections: only the artifact and API listeners are bounded.
	unbounded := o.limits
	unbounded.MaxConnections = 0
	srv := httpapi.NewServer(
		httpapi.Listener{Name: "artifacts", Addr: o.storageAddr, Handler: httpapi.NewArtifactServer(hcfg), Limits: o.limits},
		httpapi.Listener{Name: "health", Addr: o.healthAddr, Handler: httpapi.NewHealthServer(hcfg), Limits: unbounded},
		httpapi.Listener{Name: "metrics", Addr: o.metricsAddr, Handler: httpapi.NewMetricsServer(o.pprof), Limits: unbounded},
		httpapi.Listener{Name: "api", Addr: o.apiAddr, Handler: httpapi.NewAPIServer(hcfg), Limits: o.limits},
	)
	srv.Logger = log
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go node.Scrub(ctx, o.scrubRate)
	log.Info("source-controller started", "node", o.nodeID, "raft", raftAdv, "peers", peerList(peers))
	return srv.Run(ctx)
}

// newRunner builds the reconcilers' leadership runner from the flags.
func newRunner(o options, node *raftstore.Node, storageAdvAddr string, cfg raftstore.Config, log *slog.Logger) (*reconcilers.LeaderRunner, error) {
	restCfg, err := ctrlconfig.GetConfig()
	if err != nil {
		return nil, fmt.Errorf("--reconcile: kubernetes config: %w", err)
	}
	if err := applyFeatureGates(o.featureGates); err != nil {
		return nil, fmt.Errorf("--feature-gates: %w", err)
	}
	auth.SetDefaultServiceAccount(o.defaultSA)
	var tokens *cache.TokenCache
	if o.tokenCacheMaxSize > 0 {
		if tokens, err = cache.NewTokenCache(o.tokenCacheMaxSize); err != nil {
			return nil, fmt.Errorf("--token-cache-max-size: %w", err)
		}
	}
	ctrl.SetLogger(logr.FromSlogHandler(log.Handler()))
	return reconcilers.NewLeaderRunner(reconcilers.Options{
		RestConfig:              restCfg,
		Storage:                 node,
		StorageAdvAddr:          storageAdvAddr,
		Retention:               cfg.Retention,
		DigestAlgorithm:         cfg.DigestAlgorithm,
		EventsAddr:              o.eventsAddr,
		Concurrent:              o.concurrent,
		RequeueDependency:       o.requeueDependency,
		ArchiveMaxSize:          o.sourceMaxSize,
		ArchiveMaxEntries:       o.sourceMaxEntries,
		HelmIndexMaxSize:        o.helmIndexMaxSize,
		HelmChartMaxSize:        o.helmChartMaxSize,
		GracefulShutdownTimeout: o.reconcileGraceTime,
		TokenCache:              tokens,
		// Reconcile only once every entry earlier leaders committed is applied here.
		CatchUp: func(context.Context) error {
			start := time.Now()
			if err := node.Barrier(time.Minute); err != nil {
				return err
			}
			// How long a new leader waits before reconciling: part of every failover.
			log.Info("caught up with the raft log", "took", time.Since(start).Round(time.Millisecond))
			return nil
		},
		Logger: log,
	})
}

// peerList renders peers like --peers: id=host:port,...
func peerList(peers []clusterapi.Peer) string {
	var b strings.Builder
	for i, p := range peers {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(p.ID + "=" + p.RaftAddr)
	}
	return b.String()
}

func newLogger(level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

func readToken(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--api-token-file: %w", err)
	}
	// An empty token would silently refuse every internal API request,
	// peers' registrations included.
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("--api-token-file %s: the file holds no token (empty or only whitespace)", path)
	}
	return token, nil
}

// withHost replaces the host of a listen address such as ":9090".
func withHost(addr, host string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return net.JoinHostPort(host, port)
}

func hostOf(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}

func orDefault(v, def string) string {
	if v != "" {
		return v
	}
	return def
}

// applyFeatureGates sets the gates named in spec (Name=bool,...);
// an unknown gate or value is an error rather than silently ignored.
func applyFeatureGates(spec string) error {
	for _, kv := range strings.Split(spec, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		name, val, ok := strings.Cut(kv, "=")
		on, err := strconv.ParseBool(val)
		if !ok || err != nil {
			return fmt.Errorf("%q: want Name=true or Name=false", kv)
		}
		switch name {
		case auth.FeatureGateObjectLevelWorkloadIdentity:
			if on {
				auth.EnableObjectLevelWorkloadIdentity()
			} else {
				auth.DisableObjectLevelWorkloadIdentity()
			}
		default:
			return fmt.Errorf("unknown feature gate %q", name)
		}
	}
	return nil
}
