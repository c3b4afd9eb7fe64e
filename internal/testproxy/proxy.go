// Package testproxy is the HTTP proxy tests run on loopback: CONNECT
// tunnels (HTTPS) and absolute-URI forwarding (plain HTTP), optional basic
// auth, and a record of what it carried and refused. Routes carry a host
// name to a loopback address, so clients can reach endpoints that exist
// only in the test under their real names. Nothing leaves loopback: a
// target that is neither routed nor a loopback address is refused.
package testproxy

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"
)

// Proxy is a started proxy; the zero value is not usable.
type Proxy struct {
	srv        *httptest.Server
	user, pass string
	// forward sends plain-HTTP requests on, never through a proxy itself.
	forward *http.Transport

	mu      sync.Mutex
	routes  map[string]string
	carried map[string]int
	refused map[string]int
}

// Start starts a proxy on loopback; with user set it answers 407 to
// requests without that user's Proxy-Authorization.
func Start(user, pass string) *Proxy {
	p := &Proxy{user: user, pass: pass, routes: map[string]string{}, carried: map[string]int{}, refused: map[string]int{}}
	p.forward = &http.Transport{Proxy: nil, DialContext: p.dialContext}
	p.srv = httptest.NewUnstartedServer(p)
	// Tunnels torn down by either side are expected.
	p.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	p.srv.Start()
	return p
}

// URL is the proxy's address, as a proxy secret's address.
func (p *Proxy) URL() string { return p.srv.URL }

// Close cuts open tunnels and stops the proxy.
func (p *Proxy) Close() {
	p.srv.CloseClientConnections()
	p.srv.Close()
	p.forward.CloseIdleConnections()
}

// Route sends requests for target (host:port) to addr, a loopback
// host:port.
func (p *Proxy) Route(target, addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.routes[target] = addr
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	target := r.Host
	if r.Method != http.MethodConnect {
		if !r.URL.IsAbs() {
			http.Error(w, "not a proxy request", http.StatusBadRequest)
			return
		}
		target = r.URL.Host
		if r.URL.Port() == "" {
			target = net.JoinHostPort(r.URL.Hostname(), "80")
		}
	}
	if p.user != "" && !p.authorized(r) {
		p.count(p.refused, target)
		w.Header().Set("Proxy-Authenticate", `Basic realm="test-proxy"`)
		http.Error(w, "proxy authentication required", http.StatusProxyAuthRequired)
		return
	}
	addr, ok := p.resolve(target)
	if !ok {
		p.count(p.refused, target)
		http.Error(w, "test proxy: "+target+" is not on loopback and has no route", http.StatusForbidden)
		return
	}
	p.count(p.carried, target)
	if r.Method == http.MethodConnect {
		p.tunnel(w, addr)
		return
	}
	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.Header.Del("Proxy-Authorization")
	out.Header.Del("Proxy-Connection")
	resp, err := p.forward.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

// resolve is where a request for target goes: its route, else target
// itself when it is on loopback.
func (p *Proxy) resolve(target string) (string, bool) {
	p.mu.Lock()
	addr, ok := p.routes[target]
	p.mu.Unlock()
	if ok {
		return addr, true
	}
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		return "", false
	}
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return target, true
	}
	return "", false
}

func (p *Proxy) dialContext(ctx context.Context, network, target string) (net.Conn, error) {
	addr, ok := p.resolve(target)
	if !ok {
		return nil, fmt.Errorf("test proxy: %s is not on loopback and has no route", target)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// tunnel connects the client to addr and copies both ways until either
// side closes.
func (p *Proxy) tunnel(w http.ResponseWriter, addr string) {
	dst, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	conn, buf, err := w.(http.Hijacker).Hijack()
	if err != nil {
		dst.Close()
		return
	}
	if _, err := conn.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		conn.Close()
		dst.Close()
		return
	}
	go func() {
		// What the client sent after its CONNECT may already be buffered.
		_, _ = io.Copy(dst, buf)
		dst.Close()
	}()
	_, _ = io.Copy(conn, dst)
	conn.Close()
}

func (p *Proxy) authorized(r *http.Request) bool {
	scheme, cred, ok := strings.Cut(r.Header.Get("Proxy-Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return false
	}
	raw, err := base64.StdEncoding.DecodeString(cred)
	if err != nil {
		return false
	}
	user, pass, _ := strings.Cut(string(raw), ":")
	return user == p.user && pass == p.pass
}

func (p *Proxy) count(m map[string]int, target string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	m[target]++
}

// CarriedTo and RefusedTo are how many requests to target (host:port)
// the proxy carried or refused.
func (p *Proxy) CarriedTo(target string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.carried[target]
}

func (p *Proxy) RefusedTo(target string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refused[target]
}

// Hosts lists what the proxy carried, for failure messages.
func (p *Proxy) Hosts() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return fmt.Sprint(p.carried)
}
