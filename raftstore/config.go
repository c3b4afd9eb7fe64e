package raftstore

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/storage"
)

// Config is everything a Node needs; cmd/ fills it from flags.
type Config struct {
	NodeID string
	// Dir holds raft/ (log, stable and snapshot stores) and fsm.db.
	Dir string
	// RaftBind is the TCP address the Raft transport listens on.
	RaftBind string
	// RaftAdvertise is the address peers dial; defaults to RaftBind.
	RaftAdvertise string
	// Peers is the bootstrap voter set, this node included; empty means
	// this node joins an existing cluster instead of bootstrapping.
	Peers []clusterapi.Peer
	// Join lists internal API addresses of replicas to register with when
	// no leader is known (a joining node), and to ask at first start
	// whether a cluster already runs (then a member of Peers without state
	// joins instead of bootstrapping).
	Join []string
	// ServerStabilizationTime is how long a caught-up non-voter must stay
	// healthy before autopilot promotes it to voter.
	ServerStabilizationTime time.Duration
	// DeadServerTimeout is how long a server may stay unreachable before
	// the leader's autopilot removes it (never below 3 voters); zero
	// disables the removal.
	DeadServerTimeout time.Duration
	// TLS secures the Raft transport with mutual TLS. Nil is refused
	// unless Insecure is set.
	TLS      *TLSFiles
	Insecure bool

	// APIAddr and StorageAddr are this replica's advertised internal API
	// and artifact addresses, registered through the log so peers can
	// forward writes and fetch artifacts they have not applied yet.
	APIAddr     string
	StorageAddr string
	// APIToken and HTTPClient (default: a 10s timeout) are how the node
	// calls peers' internal APIs, through a clusterapi.Client.
	APIToken   string
	HTTPClient *http.Client

	// DigestAlgorithm is the algorithm of every new artifact's Digest
	// (Flux's --artifact-digest-algo); empty means sha256. The blob is
	// addressed by sha256 whatever it is.
	DigestAlgorithm digest.Algorithm

	// MaxArtifactSize bounds one stored artifact; zero means no bound.
	MaxArtifactSize int64
	// SnapshotBytes is how many log bytes trigger a snapshot.
	SnapshotBytes int64
	// LogStore is where the Raft log lives: LogStoreWAL (the default) or
	// LogStoreBoltDB. A replica whose log is in the other store moves its
	// entries over once at Open.
	LogStore string
	// TrailingLogs is how many entries stay in the log after a snapshot.
	TrailingLogs uint64
	// UploadTTL is how long an upload without a commit survives before
	// the leader expires it.
	UploadTTL time.Duration
	// Retention is the policy the leader applies to every source object
	// each GCInterval; zero GCInterval disables the periodic collection.
	Retention  storage.GCPolicy
	GCInterval time.Duration
	// ApplyTimeout bounds one Raft proposal.
	ApplyTimeout time.Duration
	// ReadyLag is how many committed entries a replica may trail and still be Ready.
	ReadyLag uint64

	// Raft timing; zero values take the defaults below.
	HeartbeatTimeout time.Duration
	ElectionTimeout  time.Duration

	// Blobs, when set, is the object store blob bytes rest in
	// (--storage-backend=s3); nil keeps them in files on every replica.
	Blobs BlobStore
	// Presign, when positive and Blobs is set, answers downloads with a
	// redirect to a URL pre-signed for that long instead of streaming the
	// bytes through the local cache.
	Presign time.Duration

	// NoSync skips fsyncs of the FSM database; tests and benchmarks only.
	NoSync bool
	Logger *slog.Logger
}

// TLSFiles names the PEM files of the Raft mutual-TLS setup.
type TLSFiles struct {
	CertFile, KeyFile, CAFile string
	// ServerName overrides the name checked in peer certificates; empty
	// means the host of the dialed address.
	ServerName string
	// config is set instead of the files by tests that build certificates in memory.
	config *tls.Config
}

func (c *Config) setDefaults() {
	if c.RaftAdvertise == "" {
		c.RaftAdvertise = c.RaftBind
	}
	if c.DigestAlgorithm == "" {
		c.DigestAlgorithm = digest.SHA256
	}
	if c.SnapshotBytes == 0 {
		c.SnapshotBytes = 64 << 20
	}
	if c.LogStore == "" {
		c.LogStore = LogStoreWAL
	}
	if c.TrailingLogs == 0 {
		// Mostly chunk entries: about 32 MiB of log kept for lagging followers.
		c.TrailingLogs = 64
	}
	if c.UploadTTL == 0 {
		c.UploadTTL = 10 * time.Minute
	}
	if c.ApplyTimeout == 0 {
		c.ApplyTimeout = 30 * time.Second
	}
	if c.ReadyLag == 0 {
		c.ReadyLag = 128
	}
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = time.Second
	}
	if c.ServerStabilizationTime == 0 {
		c.ServerStabilizationTime = 10 * time.Second
	}
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = time.Second
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

func (c *Config) validate() error {
	if c.NodeID == "" {
		return fmt.Errorf("node id is empty")
	}
	if c.Dir == "" {
		return fmt.Errorf("storage path is empty")
	}
	if c.RaftBind == "" {
		return fmt.Errorf("raft address is empty")
	}
	if c.LogStore != LogStoreWAL && c.LogStore != LogStoreBoltDB {
		return fmt.Errorf("raft log store %q: want %s or %s", c.LogStore, LogStoreWAL, LogStoreBoltDB)
	}
	if _, err := storage.DigestAlgorithm(c.DigestAlgorithm.String()); err != nil {
		return fmt.Errorf("artifact digest algorithm: %w", err)
	}
	if c.TLS == nil && !c.Insecure {
		return ErrNoTLS
	}
	self := false
	for _, p := range c.Peers {
		if p.ID == c.NodeID {
			self = true
		}
	}
	if len(c.Peers) > 0 && !self {
		return fmt.Errorf("peers %v do not include this node %q", c.Peers, c.NodeID)
	}
	return nil
}

// ParsePeers parses "id=host:port,id=host:port".
func ParsePeers(s string) ([]clusterapi.Peer, error) {
	var peers []clusterapi.Peer
	seen := map[string]bool{}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		id, addr, ok := strings.Cut(item, "=")
		if !ok || id == "" || addr == "" || !strings.Contains(addr, ":") {
			return nil, fmt.Errorf("peer %q: want id=host:port", item)
		}
		if seen[id] {
			return nil, fmt.Errorf("peer id %q given twice", id)
		}
		seen[id] = true
		peers = append(peers, clusterapi.Peer{ID: id, RaftAddr: addr, Suffrage: "Voter"})
	}
	return peers, nil
}

var _ storage.Storage = (*Node)(nil)
