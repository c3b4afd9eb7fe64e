// Package cloudnet puts cloud service endpoints on loopback for tests.
// Cloud clients (fluxcd/pkg/auth's AWS, Azure and GCP providers) reach
// fixed public host names over HTTPS with the system's roots; here those
// names lead, through a routing proxy the process uses as its HTTPS_PROXY,
// to loopback servers whose certificates a test CA signs, and the process
// trusts that CA as its system roots. A name without a route is refused
// by the proxy, so nothing leaves the machine.
package cloudnet

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"

	"github.com/sourceraft/sourceraft/internal/pki"
	"github.com/sourceraft/sourceraft/internal/testproxy"
)

// Net is the proxy, the CA and the servers started on them.
type Net struct {
	Proxy *testproxy.Proxy
	CA    *pki.CA
	// CAFile holds CA's certificate (PEM), the process's SSL_CERT_FILE.
	CAFile  string
	servers []*httptest.Server
}

// Start creates the CA (its certificate written into dir) and the proxy.
func Start(dir string) (*Net, error) {
	ca, err := pki.NewCA("cloudnet test CA")
	if err != nil {
		return nil, err
	}
	f := filepath.Join(dir, "cloudnet-ca.crt")
	if err := os.WriteFile(f, ca.PEM, 0o600); err != nil {
		return nil, err
	}
	return &Net{Proxy: testproxy.Start("", ""), CA: ca, CAFile: f}, nil
}

// UseForProcess makes the proxy this process's HTTPS_PROXY and HTTP_PROXY
// and the CA its only system root. net/http and crypto/x509 read these
// once, so it must run before any HTTP client does (first in TestMain).
// Loopback addresses never go through an environment proxy, so tests
// talking to loopback servers are unaffected.
func (n *Net) UseForProcess() error {
	for k, v := range map[string]string{
		"HTTPS_PROXY": n.Proxy.URL(), "HTTP_PROXY": n.Proxy.URL(),
		"NO_PROXY": "", "SSL_CERT_FILE": n.CAFile, "SSL_CERT_DIR": "",
	} {
		if err := os.Setenv(k, v); err != nil {
			return err
		}
	}
	for _, k := range []string{"https_proxy", "http_proxy", "no_proxy"} {
		if err := os.Unsetenv(k); err != nil {
			return err
		}
	}
	return nil
}

// Serve starts an HTTPS server for h with a certificate for hosts (host
// names without ports) and routes host:443 of each to it.
func (n *Net) Serve(h http.Handler, hosts ...string) (*httptest.Server, error) {
	pair, err := n.CA.Issue(hosts[0], hosts, []net.IP{net.ParseIP("127.0.0.1")})
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
	if err != nil {
		return nil, err
	}
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	n.servers = append(n.servers, srv)
	for _, host := range hosts {
		n.Proxy.Route(net.JoinHostPort(host, "443"), srv.Listener.Addr().String())
	}
	return srv, nil
}

// Route sends requests for target (host:port) to addr, a loopback
// server the caller runs itself (a registry presenting a certificate from
// CA, say).
func (n *Net) Route(target, addr string) { n.Proxy.Route(target, addr) }

// Close stops the servers and the proxy.
func (n *Net) Close() {
	for _, s := range n.servers {
		s.Close()
	}
	n.Proxy.Close()
}

// String names the proxy, for failure messages.
func (n *Net) String() string {
	return fmt.Sprintf("cloudnet proxy %s carried %s", n.Proxy.URL(), n.Proxy.Hosts())
}
