package raftstore

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/hashicorp/raft"
)

// ErrNoTLS is returned by Open when no certificates are configured and
// the insecure transport was not asked for explicitly.
var ErrNoTLS = errors.New("raft transport needs --raft-tls-cert, --raft-tls-key and --raft-tls-ca (or --raft-insecure)")

// NewTLSFilesFromConfig wraps an in-memory TLS configuration, for tests.
func NewTLSFilesFromConfig(c *tls.Config) *TLSFiles { return &TLSFiles{config: c} }

// load builds one tls.Config used both to accept and to dial peers:
// each side presents its certificate and requires one from the cluster CA.
func (f *TLSFiles) load() (*tls.Config, error) {
	if f.config != nil {
		return f.config.Clone(), nil
	}
	cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load raft certificate: %w", err)
	}
	caPEM, err := os.ReadFile(f.CAFile)
	if err != nil {
		return nil, fmt.Errorf("read raft CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("raft CA %s holds no PEM certificate", f.CAFile)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ServerName:   f.ServerName,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// streamLayer is raft's StreamLayer over TCP, optionally wrapped in TLS.
type streamLayer struct {
	net.Listener
	advertise net.Addr
	tls       *tls.Config
}

func newStreamLayer(bind, advertise string, cfg *tls.Config) (*streamLayer, error) {
	adv, err := net.ResolveTCPAddr("tcp", advertise)
	if err != nil {
		return nil, fmt.Errorf("resolve raft advertise address %q: %w", advertise, err)
	}
	if adv.IP == nil || adv.IP.IsUnspecified() {
		return nil, fmt.Errorf("raft advertise address %q is not routable", advertise)
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("listen on raft address: %w", err)
	}
	if cfg != nil {
		ln = tls.NewListener(ln, cfg)
	}
	return &streamLayer{Listener: ln, advertise: adv, tls: cfg}, nil
}

func (s *streamLayer) Addr() net.Addr { return s.advertise }

func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	if s.tls == nil {
		return d.Dial("tcp", string(addr))
	}
	cfg := s.tls.Clone()
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(string(addr))
		if err != nil {
			return nil, fmt.Errorf("raft peer address %q: %w", addr, err)
		}
		cfg.ServerName = host
	}
	// Handshake now so a peer with a bad certificate fails the dial rather
	// than the first RPC.
	conn, err := tls.DialWithDialer(d, "tcp", string(addr), cfg)
	if err != nil {
		return nil, fmt.Errorf("tls dial raft peer %s: %w", addr, err)
	}
	return conn, nil
}
