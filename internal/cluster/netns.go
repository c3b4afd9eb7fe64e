package cluster

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
)

// network gives every replica a network namespace of its own, joined to
// the caller's namespace by a veth pair on one bridge: replicas reach each
// other over the bridge and the caller (consumers, the test) reaches them
// at their own addresses. Cutting a replica's veth off the bridge and
// routing to it directly partitions it from its peers while the caller
// still reaches it, as a Service would during a real partition.
//
// It needs root (CAP_NET_ADMIN) and iproute2's ip.
type network struct {
	id     string // random: names the bridge, the veths and the namespaces
	bridge string
	subnet [3]byte // 10.a.b
	host   net.IP  // the bridge's own address, the caller's side

	mu          sync.Mutex
	veths       []string // host-side veth per replica
	netns       []string
	partitioned map[int]bool
	forwards    []net.Listener
}

func newNetwork() (*network, error) {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("network namespaces need ip from iproute2 (make host-tools installs it): %w", err)
	}
	n := &network{id: hex.EncodeToString(b[:2]), partitioned: map[int]bool{}}
	n.bridge = "srb" + n.id
	used, err := ip("-4", "-o", "addr", "show")
	if err != nil {
		return nil, err
	}
	// A /24 of 10/8 nobody on this machine uses, so parallel test runs and
	// the host's own interfaces never clash.
	for tries := 0; ; tries++ {
		if tries > 50 {
			return nil, errors.New("network: no free 10.x.y.0/24 subnet")
		}
		n.subnet = [3]byte{10, 100 + b[2]%150, b[3]}
		if !strings.Contains(used, fmt.Sprintf(" %d.%d.%d.", n.subnet[0], n.subnet[1], n.subnet[2])) {
			break
		}
		if _, err := rand.Read(b[2:]); err != nil {
			return nil, err
		}
	}
	n.host = n.addr(1)
	// A MAC of the bridge's own: by default it takes its lowest port's,
	// and would change while that replica's veth is off the bridge, cutting
	// every other replica off the host too.
	mac := fmt.Sprintf("02:53:52:%02x:%02x:01", b[0], b[1])
	for _, args := range [][]string{
		{"link", "add", n.bridge, "address", mac, "type", "bridge"},
		{"addr", "add", n.host.String() + "/24", "dev", n.bridge},
		{"link", "set", n.bridge, "up"},
	} {
		if _, err := ip(args...); err != nil {
			n.close()
			return nil, err
		}
	}
	return n, nil
}

func (n *network) addr(last int) net.IP {
	return net.IPv4(n.subnet[0], n.subnet[1], n.subnet[2], byte(last))
}

// addReplica creates replica i's namespace, with eth0 on the bridge and
// lo up, and returns the namespace's name and address.
func (n *network) addReplica(i int) (string, net.IP, error) {
	if i > 200 {
		return "", nil, fmt.Errorf("network: replica %d: at most 200 replicas", i)
	}
	ns := fmt.Sprintf("sr%s-%d", n.id, i)
	veth := fmt.Sprintf("srv%sh%d", n.id, i)
	addr := n.addr(10 + i)
	n.mu.Lock()
	n.netns = append(n.netns, ns)
	n.veths = append(n.veths, veth)
	n.mu.Unlock()
	for _, args := range [][]string{
		{"netns", "add", ns},
		{"link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"link", "set", veth, "master", n.bridge},
		{"link", "set", veth, "up"},
		{"-n", ns, "addr", "add", addr.String() + "/24", "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
		{"-n", ns, "link", "set", "lo", "up"},
	} {
		if _, err := ip(args...); err != nil {
			return "", nil, err
		}
	}
	return ns, addr, nil
}

// partition takes replica i's veth off the bridge: its peers' frames no
// longer reach it nor its frames them. A host route keeps the caller's
// side talking to it, and the replica to the caller once it resolves the
// bridge address again: the host answers ARP for it on the veth too, but
// with the veth's MAC, so the replica's cached neighbours are flushed
// (frames to the bridge's MAC would be dropped on the veth).
func (n *network) partition(i int) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.partitioned[i] {
		return nil
	}
	veth := n.veths[i]
	if _, err := ip("link", "set", veth, "nomaster"); err != nil {
		return err
	}
	if _, err := ip("route", "add", n.addr(10+i).String()+"/32", "dev", veth, "src", n.host.String()); err != nil {
		_, _ = ip("link", "set", veth, "master", n.bridge)
		return err
	}
	n.partitioned[i] = true
	_, err := ip("-n", n.netns[i], "neigh", "flush", "dev", "eth0")
	return err
}

// reconnect undoes partition.
func (n *network) reconnect(i int) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.partitioned[i] {
		return nil
	}
	veth := n.veths[i]
	if _, err := ip("route", "del", n.addr(10+i).String()+"/32", "dev", veth); err != nil {
		return err
	}
	if _, err := ip("link", "set", veth, "master", n.bridge); err != nil {
		return err
	}
	delete(n.partitioned, i)
	// Back to the bridge's MAC for the host, and to the peers' for them.
	_, err := ip("-n", n.netns[i], "neigh", "flush", "dev", "eth0")
	return err
}

// forward listens on the bridge address and relays every connection to
// target: how replicas reach a server the caller runs on its loopback
// (the API server, the Git server). TLS passes through untouched.
func (n *network) forward(target string) (string, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(n.host.String(), "0"))
	if err != nil {
		return "", fmt.Errorf("network: forward to %s: %w", target, err)
	}
	n.mu.Lock()
	n.forwards = append(n.forwards, ln)
	n.mu.Unlock()
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			go relay(in, target)
		}
	}()
	return ln.Addr().String(), nil
}

func relay(in net.Conn, target string) {
	defer in.Close()
	out, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer out.Close()
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(out, in)
	go cp(in, out)
	<-done
	<-done
}

// close removes the forwarders, the namespaces, the veths and the bridge;
// the replicas must have stopped.
func (n *network) close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, ln := range n.forwards {
		ln.Close()
	}
	for _, v := range n.veths {
		_, _ = ip("link", "del", v)
	}
	for _, ns := range n.netns {
		_, _ = ip("netns", "del", ns)
	}
	_, _ = ip("link", "del", n.bridge)
}

func ip(args ...string) (string, error) {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
