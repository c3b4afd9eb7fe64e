package httpapi

import (
	"log/slog"
	"net/http"
	"time"
)

// Default listen addresses, the same as Flux's source-controller flags.
const (
	DefaultStorageAddr = ":9090"
	DefaultHealthAddr  = ":9440"
	DefaultMetricsAddr = ":8080"
	DefaultAPIAddr     = ":9091"
)

// DefaultPeerWait is how long an artifact GET waits for local apply
// before asking peers when Config.PeerWait is zero. It covers a Raft
// election (1–3 s here): an artifact the dead leader committed is in the
// followers' logs, and the next leader commits it for them to apply.
const DefaultPeerWait = 5 * time.Second

// Config is shared by the listener constructors.
type Config struct {
	Backend Backend
	// APIToken is the bearer token of the internal API; empty refuses
	// every internal API request with 401.
	APIToken string
	// StorageAdvAddr is the host:port artifact URLs returned by PUT name;
	// empty uses this replica's registered StorageAddr from Status.
	StorageAdvAddr string
	// MaxArtifactSize bounds PUT bodies (413 beyond it); zero or less is unlimited.
	MaxArtifactSize int64
	// PeerWait is how long an artifact GET waits for local apply before
	// asking peers.
	PeerWait time.Duration
	// Client forwards requests to the leader and to peers.
	Client *http.Client
	Logger *slog.Logger
}

func (cfg Config) withDefaults() Config {
	if cfg.PeerWait <= 0 {
		cfg.PeerWait = DefaultPeerWait
	}
	if cfg.Client == nil {
		cfg.Client = defaultClient
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg
}

// defaultClient keeps enough idle connections per peer that forwarded
// downloads under load do not each pay a new TCP handshake.
var defaultClient = func() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 32
	return &http.Client{Transport: t}
}()
