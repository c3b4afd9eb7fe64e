// Command source-controller is sourceraft: a replicated, highly available
// Flux source-controller. This file holds flags and wiring only.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/sourceraft/sourceraft/httpapi"
	"github.com/sourceraft/sourceraft/metrics"
	"github.com/sourceraft/sourceraft/raftstore"
	"github.com/sourceraft/sourceraft/storage"
)

type options struct {
	nodeID, raftAddr, raftAdvAddr, peers, storagePath   string
	storageAddr, storageAdvAddr, storagePeerAddr        string
	healthAddr, metricsAddr, apiAddr, apiAdvAddr        string
	apiTokenFile, tlsCert, tlsKey, tlsCA, tlsServerName string
	insecure, reconcile                                 bool
	retentionTTL, gcInterval                            time.Duration
	retentionRecords                                    int
	maxArtifactSize, snapshotBytes                      int64
	logLevel                                            string
}

func main() {
	hostname, _ := os.Hostname()
	var o options
	flag.StringVar(&o.nodeID, "node-id", hostname, "Raft node id; in a StatefulSet the pod name.")
	flag.StringVar(&o.raftAddr, "raft-addr", ":7000", "Address the Raft transport listens on.")
	flag.StringVar(&o.raftAdvAddr, "raft-advertise-addr", "", "Address peers dial for Raft (default: --raft-addr with this host's name).")
	flag.StringVar(&o.peers, "peers", "", "Bootstrap voters: id=host:port,... including this node.")
	flag.StringVar(&o.storagePath, "storage-path", "/data", "Directory of the Raft log, snapshots and artifact database.")
	flag.StringVar(&o.storageAddr, "storage-addr", ":9090", "Address the artifact server listens on.")
	flag.StringVar(&o.storageAdvAddr, "storage-adv-addr", "", "Host:port written into artifact URLs (the Service address).")
	flag.StringVar(&o.storagePeerAddr, "storage-peer-addr", "", "This replica's own artifact address for peers (default: Raft advertise host, --storage-addr port).")
	flag.StringVar(&o.healthAddr, "health-addr", ":9440", "Address of /healthz and /readyz.")
	flag.StringVar(&o.metricsAddr, "metrics-addr", ":8080", "Address of /metrics.")
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
	flag.Int64Var(&o.maxArtifactSize, "max-artifact-size", 1<<30, "Largest artifact accepted, in bytes.")
	flag.Int64Var(&o.snapshotBytes, "raft-snapshot-bytes", 128<<20, "Log bytes that trigger a Raft snapshot.")
	flag.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error.")
	flag.Parse()

	log := newLogger(o.logLevel)
	slog.SetDefault(log)
	if err := run(o, log); err != nil {
		log.Error("source-controller stopped", "error", err)
		os.Exit(1)
	}
}

func run(o options, log *slog.Logger) error {
	if o.reconcile {
		return errors.New("--reconcile is not available in this build yet")
	}
	peers, err := raftstore.ParsePeers(o.peers)
	if err != nil {
		return fmt.Errorf("--peers: %w", err)
	}
	raftAdv := o.raftAdvAddr
	if raftAdv == "" {
		raftAdv = withHost(o.raftAddr, o.nodeID)
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
		MaxArtifactSize: o.maxArtifactSize, SnapshotBytes: o.snapshotBytes,
		Retention:  storage.GCPolicy{TTL: o.retentionTTL, Records: o.retentionRecords},
		GCInterval: o.gcInterval,
		Logger:     log,
	}
	if o.tlsCert != "" || o.tlsKey != "" || o.tlsCA != "" {
		cfg.TLS = &raftstore.TLSFiles{CertFile: o.tlsCert, KeyFile: o.tlsKey, CAFile: o.tlsCA, ServerName: o.tlsServerName}
	}
	node := raftstore.New(cfg)
	if err := node.Open(); err != nil {
		return err
	}
	defer node.Close()
	metrics.StorageBackend.WithLabelValues("raft-bbolt").Set(1)

	hcfg := httpapi.Config{Backend: node, APIToken: token, MaxArtifactSize: o.maxArtifactSize, StorageAdvAddr: o.storageAdvAddr, Logger: log}
	srv := httpapi.NewServer(
		httpapi.Listener{Name: "artifacts", Addr: o.storageAddr, Handler: httpapi.NewArtifactServer(hcfg)},
		httpapi.Listener{Name: "health", Addr: o.healthAddr, Handler: httpapi.NewHealthServer(hcfg)},
		httpapi.Listener{Name: "metrics", Addr: o.metricsAddr, Handler: httpapi.NewMetricsServer()},
		httpapi.Listener{Name: "api", Addr: o.apiAddr, Handler: httpapi.NewAPIServer(hcfg)},
	)
	srv.Logger = log
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log.Info("source-controller started", "node", o.nodeID, "raft", raftAdv, "peers", o.peers)
	return srv.Run(ctx)
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
	return strings.TrimSpace(string(b)), nil
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
