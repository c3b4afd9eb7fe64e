// Package identity derives a replica's Raft identity from its place in a
// Kubernetes StatefulSet. The node id is the pod name (<set>-<ordinal>),
// the bootstrap voters are the pods <set>-0 … <set>-(N-1), and every Raft
// address comes from one pattern over the per-pod DNS names of the
// StatefulSet's headless Service, e.g.
//
//	{id}.source-controller-peers.flux-system.svc.cluster.local.:7000
//
// Every replica computes the same voter set from the same flags, which is
// what hashicorp/raft's BootstrapCluster needs; a replica that already has
// Raft state ignores it. A pod beyond that set (the StatefulSet was scaled
// up) does not bootstrap: it joins through the bootstrap set's internal APIs.
package identity

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/raftstore"
)

// Placeholders of a --peer-dns pattern.
const (
	// IDPlaceholder is replaced by a peer's pod name, which is its node id.
	IDPlaceholder = "{id}"
	// OrdinalPlaceholder is replaced by a peer's StatefulSet ordinal.
	OrdinalPlaceholder = "{ordinal}"
)

// Flags are cmd/source-controller's identity flags.
type Flags struct {
	// NodeID is --node-id: the pod name in a StatefulSet.
	NodeID string
	// Peers is --peers ("id=host:port,..."); when set it wins over Replicas.
	Peers string
	// Replicas is --replicas: the size of the StatefulSet the cluster is
	// bootstrapped with; zero means no derived peer set.
	Replicas int
	// PeerDNS is --peer-dns: the Raft address pattern of one pod.
	PeerDNS string
	// RaftAddr is --raft-addr, the listen address (":7000").
	RaftAddr string
	// Advertise is --raft-advertise-addr; when set it wins over PeerDNS.
	Advertise string
	// APIAddr is --api-addr, the internal API listen address (":9091"):
	// its port is every pod's.
	APIAddr string
	// Join is --join ("host:port,..."); when empty and the peer set is
	// derived, the bootstrap set's internal APIs.
	Join string
}

// Identity is what raftstore.Config needs to know about this replica.
type Identity struct {
	NodeID string
	// Peers is the bootstrap voter set, this node included; nil means the
	// node does not bootstrap (it only resumes existing Raft state).
	Peers []clusterapi.Peer
	// Advertise is the Raft address peers dial for this node.
	Advertise string
	// Join lists the internal API addresses a node without Raft state asks
	// to be added to a running cluster.
	Join []string
}

// Derive resolves the identity flags. Precedence: --peers over
// --replicas/--peer-dns for the voter set; --raft-advertise-addr over
// --peer-dns over "<node-id>:<raft port>" for the advertised address.
func Derive(f Flags) (Identity, error) {
	id := Identity{NodeID: f.NodeID}
	if f.NodeID == "" {
		return id, errors.New("--node-id is empty (set it, POD_NAME, or the hostname)")
	}
	if f.Replicas < 0 {
		return id, fmt.Errorf("--replicas=%d: must not be negative", f.Replicas)
	}
	if f.Replicas > 0 && f.PeerDNS == "" {
		return id, errors.New("--replicas needs --peer-dns, the address pattern of a pod (e.g. {id}.<headless service>.<namespace>.svc.cluster.local.:7000)")
	}
	if f.PeerDNS != "" && f.Replicas == 0 && f.Peers == "" {
		return id, errors.New("--peer-dns needs --replicas (or --peers)")
	}

	var err error
	switch {
	case f.Peers != "":
		if id.Peers, err = raftstore.ParsePeers(f.Peers); err != nil {
			return id, fmt.Errorf("--peers: %w", err)
		}
	case f.Replicas > 0:
		set, ord, err := ParsePodName(f.NodeID)
		if err != nil {
			return id, err
		}
		bootstrap, err := setPeers(set, f.Replicas, f.PeerDNS)
		if err != nil {
			return id, err
		}
		// Beyond the bootstrap set this pod joins and bootstraps nothing.
		if ord < f.Replicas {
			id.Peers = bootstrap
		}
		if f.Join == "" && f.APIAddr != "" {
			for _, p := range bootstrap {
				if p.ID != f.NodeID {
					id.Join = append(id.Join, withPort(hostOf(p.RaftAddr), f.APIAddr))
				}
			}
		}
	}
	for _, a := range strings.Split(f.Join, ",") {
		if a = strings.TrimSpace(a); a != "" {
			id.Join = append(id.Join, a)
		}
	}

	switch {
	case f.Advertise != "":
		id.Advertise = f.Advertise
	case f.PeerDNS != "":
		_, ord, err := ParsePodName(f.NodeID)
		if err != nil {
			return id, fmt.Errorf("--peer-dns: %w", err)
		}
		if id.Advertise, err = Address(f.PeerDNS, f.NodeID, ord); err != nil {
			return id, err
		}
	default:
		// The pre-StatefulSet default: the node id as host, the listen port.
		id.Advertise = f.RaftAddr
		if _, port, err := net.SplitHostPort(f.RaftAddr); err == nil {
			id.Advertise = net.JoinHostPort(f.NodeID, port)
		}
	}
	return id, nil
}

// StatefulSetPeers returns the voters of a StatefulSet of replicas pods of
// the same set as self: <set>-0 … <set>-(replicas-1), each at its address
// from pattern. self must be one of them.
func StatefulSetPeers(self string, replicas int, pattern string) ([]clusterapi.Peer, error) {
	set, ord, err := ParsePodName(self)
	if err != nil {
		return nil, err
	}
	if ord >= replicas {
		return nil, fmt.Errorf("pod %s has ordinal %d, outside --replicas=%d: it joins rather than bootstraps", self, ord, replicas)
	}
	return setPeers(set, replicas, pattern)
}

func setPeers(set string, replicas int, pattern string) ([]clusterapi.Peer, error) {
	if replicas < 1 {
		return nil, fmt.Errorf("--replicas=%d: need at least 1", replicas)
	}
	if !strings.Contains(pattern, IDPlaceholder) && !strings.Contains(pattern, OrdinalPlaceholder) {
		return nil, fmt.Errorf("--peer-dns %q: contains neither %s nor %s, every peer would get the same address", pattern, IDPlaceholder, OrdinalPlaceholder)
	}
	peers := make([]clusterapi.Peer, 0, replicas)
	for i := range replicas {
		id := set + "-" + strconv.Itoa(i)
		addr, err := Address(pattern, id, i)
		if err != nil {
			return nil, err
		}
		peers = append(peers, clusterapi.Peer{ID: id, RaftAddr: addr, Suffrage: "Voter"})
	}
	return peers, nil
}

// hostOf is the host of a host:port address.
func hostOf(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}

// withPort joins host with the port of a listen address such as ":9091".
func withPort(host, listen string) string {
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return host
	}
	return net.JoinHostPort(host, port)
}

// Address fills pattern for the pod id with the given ordinal and checks
// the result is host:port.
func Address(pattern, id string, ordinal int) (string, error) {
	addr := strings.NewReplacer(IDPlaceholder, id, OrdinalPlaceholder, strconv.Itoa(ordinal)).Replace(pattern)
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("--peer-dns %q gives %q: want host:port: %w", pattern, addr, err)
	}
	if host == "" || strings.ContainsAny(host, "{}") {
		return "", fmt.Errorf("--peer-dns %q gives %q: bad host %q", pattern, addr, host)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("--peer-dns %q gives %q: bad port %q", pattern, addr, port)
	}
	return addr, nil
}

// ParsePodName splits a StatefulSet pod name "<set>-<ordinal>".
func ParsePodName(name string) (set string, ordinal int, err error) {
	i := strings.LastIndexByte(name, '-')
	if i <= 0 || i == len(name)-1 {
		return "", 0, fmt.Errorf("node id %q is not a StatefulSet pod name <set>-<ordinal>", name)
	}
	set, suffix := name[:i], name[i+1:]
	ordinal, err = strconv.Atoi(suffix)
	// StatefulSet ordinals are plain decimals: no sign, no leading zero.
	if err != nil || ordinal < 0 || strconv.Itoa(ordinal) != suffix {
		return "", 0, fmt.Errorf("node id %q is not a StatefulSet pod name <set>-<ordinal>", name)
	}
	return set, ordinal, nil
}

// WaitForDNS waits until the host of addr resolves, for at most timeout.
// A StatefulSet pod's own name appears in the headless Service's DNS a
// moment after the pod starts; the Raft transport resolves its advertised
// address once at start, so it waits here rather than crash-looping.
func WaitForDNS(ctx context.Context, addr string, timeout time.Duration) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var lastErr error
	for {
		if _, lastErr = net.DefaultResolver.LookupHost(ctx, host); lastErr == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not resolve within %s: %w", host, timeout, lastErr)
		case <-time.After(time.Second):
		}
	}
}
