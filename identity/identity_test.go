package identity

import (
	"context"
	"crypto/x509"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/internal/pki"
)

const pattern = "{id}.source-controller-peers.flux-system.svc.cluster.local.:7000"

func voter(id, addr string) clusterapi.Peer {
	return clusterapi.Peer{ID: id, RaftAddr: addr, Suffrage: "Voter"}
}

func sts(i string) clusterapi.Peer {
	return voter("source-controller-"+i, "source-controller-"+i+".source-controller-peers.flux-system.svc.cluster.local.:7000")
}

func TestDerive(t *testing.T) {
	tests := []struct {
		name    string
		flags   Flags
		want    Identity
		wantErr string
	}{{
		name:  "statefulset of 3, pod 1",
		flags: Flags{NodeID: "source-controller-1", Replicas: 3, PeerDNS: pattern, RaftAddr: ":7000"},
		want: Identity{
			NodeID:    "source-controller-1",
			Peers:     []clusterapi.Peer{sts("0"), sts("1"), sts("2")},
			Advertise: "source-controller-1.source-controller-peers.flux-system.svc.cluster.local.:7000",
		},
	}, {
		name:  "single replica",
		flags: Flags{NodeID: "source-controller-0", Replicas: 1, PeerDNS: pattern},
		want: Identity{
			NodeID: "source-controller-0", Peers: []clusterapi.Peer{sts("0")},
			Advertise: "source-controller-0.source-controller-peers.flux-system.svc.cluster.local.:7000",
		},
	}, {
		name:  "ordinal placeholder, set name with dashes",
		flags: Flags{NodeID: "my-sc-2", Replicas: 3, PeerDNS: "my-sc-{ordinal}.peers:7100"},
		want: Identity{
			NodeID:    "my-sc-2",
			Peers:     []clusterapi.Peer{voter("my-sc-0", "my-sc-0.peers:7100"), voter("my-sc-1", "my-sc-1.peers:7100"), voter("my-sc-2", "my-sc-2.peers:7100")},
			Advertise: "my-sc-2.peers:7100",
		},
	}, {
		name:  "--peers wins over --replicas, advertise still from --peer-dns",
		flags: Flags{NodeID: "source-controller-0", Peers: "source-controller-0=10.0.0.1:7000,x=10.0.0.2:7000", Replicas: 3, PeerDNS: pattern},
		want: Identity{
			NodeID:    "source-controller-0",
			Peers:     []clusterapi.Peer{voter("source-controller-0", "10.0.0.1:7000"), voter("x", "10.0.0.2:7000")},
			Advertise: "source-controller-0.source-controller-peers.flux-system.svc.cluster.local.:7000",
		},
	}, {
		name:  "--raft-advertise-addr wins over --peer-dns",
		flags: Flags{NodeID: "source-controller-2", Replicas: 3, PeerDNS: pattern, Advertise: "10.1.2.3:7000"},
		want: Identity{
			NodeID: "source-controller-2", Peers: []clusterapi.Peer{sts("0"), sts("1"), sts("2")},
			Advertise: "10.1.2.3:7000",
		},
	}, {
		name:  "no StatefulSet flags: old behaviour",
		flags: Flags{NodeID: "replica-0", Peers: "replica-0=127.0.0.1:7001", RaftAddr: "127.0.0.1:7001"},
		want:  Identity{NodeID: "replica-0", Peers: []clusterapi.Peer{voter("replica-0", "127.0.0.1:7001")}, Advertise: "replica-0:7001"},
	}, {
		name:  "nothing: no bootstrap",
		flags: Flags{NodeID: "n", RaftAddr: ":7000"},
		want:  Identity{NodeID: "n", Advertise: "n:7000"},
	}, {
		name:  "ordinal beyond replicas joins the bootstrap set (scale-up)",
		flags: Flags{NodeID: "source-controller-3", Replicas: 3, PeerDNS: pattern, APIAddr: ":9091"},
		want: Identity{NodeID: "source-controller-3",
			Advertise: "source-controller-3.source-controller-peers.flux-system.svc.cluster.local.:7000",
			Join: []string{
				"source-controller-0.source-controller-peers.flux-system.svc.cluster.local.:9091",
				"source-controller-1.source-controller-peers.flux-system.svc.cluster.local.:9091",
				"source-controller-2.source-controller-peers.flux-system.svc.cluster.local.:9091",
			}},
	}, {
		name:  "bootstrap member joins through the others; --join wins",
		flags: Flags{NodeID: "source-controller-1", Replicas: 2, PeerDNS: "{id}.p:7000", APIAddr: ":9091", Join: "a:1, b:2"},
		want: Identity{NodeID: "source-controller-1", Advertise: "source-controller-1.p:7000",
			Peers: []clusterapi.Peer{
				{ID: "source-controller-0", RaftAddr: "source-controller-0.p:7000", Suffrage: "Voter"},
				{ID: "source-controller-1", RaftAddr: "source-controller-1.p:7000", Suffrage: "Voter"},
			},
			Join: []string{"a:1", "b:2"}},
	}, {
		name:    "not a pod name",
		flags:   Flags{NodeID: "laptop", Replicas: 3, PeerDNS: pattern},
		wantErr: "not a StatefulSet pod name",
	}, {
		name:    "leading zero ordinal",
		flags:   Flags{NodeID: "source-controller-01", Replicas: 3, PeerDNS: pattern},
		wantErr: "not a StatefulSet pod name",
	}, {
		name:    "replicas without pattern",
		flags:   Flags{NodeID: "source-controller-0", Replicas: 3},
		wantErr: "--replicas needs --peer-dns",
	}, {
		name:    "pattern without replicas",
		flags:   Flags{NodeID: "source-controller-0", PeerDNS: pattern},
		wantErr: "--peer-dns needs --replicas",
	}, {
		name:    "pattern without placeholder",
		flags:   Flags{NodeID: "source-controller-0", Replicas: 3, PeerDNS: "peers.svc:7000"},
		wantErr: "neither {id} nor {ordinal}",
	}, {
		name:    "pattern without port",
		flags:   Flags{NodeID: "source-controller-0", Replicas: 3, PeerDNS: "{id}.peers.svc"},
		wantErr: "want host:port",
	}, {
		name:    "pattern with bad port",
		flags:   Flags{NodeID: "source-controller-0", Replicas: 3, PeerDNS: "{id}.peers.svc:raft"},
		wantErr: "bad port",
	}, {
		name:    "unknown placeholder",
		flags:   Flags{NodeID: "source-controller-0", Replicas: 3, PeerDNS: "{id}.{namespace}.svc:7000"},
		wantErr: "bad host",
	}, {
		name:    "negative replicas",
		flags:   Flags{NodeID: "source-controller-0", Replicas: -1, PeerDNS: pattern},
		wantErr: "must not be negative",
	}, {
		name:    "empty node id",
		flags:   Flags{Replicas: 3, PeerDNS: pattern},
		wantErr: "--node-id is empty",
	}, {
		name:    "bad --peers",
		flags:   Flags{NodeID: "a", Peers: "a"},
		wantErr: "--peers",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Derive(tt.flags)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Derive(%+v) error = %v, want one containing %q", tt.flags, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Derive(%+v): %v", tt.flags, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Derive(%+v)\n got %+v\nwant %+v", tt.flags, got, tt.want)
			}
		})
	}
}

// Every replica must compute the same bootstrap configuration, or
// hashicorp/raft would start with diverging voter sets.
func TestStatefulSetPeersSameOnEveryPod(t *testing.T) {
	first, err := StatefulSetPeers("source-controller-0", 5, pattern)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 5; i++ {
		got, err := StatefulSetPeers("source-controller-"+string(rune('0'+i)), 5, pattern)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, first) {
			t.Fatalf("pod %d derived %v, pod 0 %v", i, got, first)
		}
	}
}

func TestParsePodName(t *testing.T) {
	for name, want := range map[string]struct {
		set string
		ord int
		ok  bool
	}{
		"source-controller-0":  {"source-controller", 0, true},
		"source-controller-12": {"source-controller", 12, true},
		"a-1":                  {"a", 1, true},
		"-1":                   {ok: false},
		"a-":                   {ok: false},
		"a-+1":                 {ok: false},
		"a":                    {ok: false},
		"":                     {ok: false},
	} {
		set, ord, err := ParsePodName(name)
		if (err == nil) != want.ok || set != want.set || ord != want.ord {
			t.Errorf("ParsePodName(%q) = %q, %d, %v; want %q, %d, ok=%v", name, set, ord, err, want.set, want.ord, want.ok)
		}
	}
}

// The derived addresses end in a dot (no resolver search-list walk); the
// Raft transport checks peer certificates against the dialed host, so the
// wildcard SAN the deploy/cert-manager overlay issues must match it.
func TestWildcardCertificateMatchesDerivedHosts(t *testing.T) {
	ca, err := pki.NewCA("raft-ca")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.Issue("source-controller", []string{"*.source-controller-peers.flux-system.svc.cluster.local"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ca.TLSConfig(pair)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(cfg.Certificates[0].Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	peers, err := StatefulSetPeers("source-controller-0", 3, pattern)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range peers {
		host, _, _ := net.SplitHostPort(p.RaftAddr)
		if err := leaf.VerifyHostname(host); err != nil {
			t.Errorf("certificate does not match %s: %v", host, err)
		}
	}
}

func TestWaitForDNS(t *testing.T) {
	ctx := context.Background()
	if err := WaitForDNS(ctx, "127.0.0.1:7000", time.Second); err != nil {
		t.Fatalf("an IP literal: %v", err)
	}
	start := time.Now()
	err := WaitForDNS(ctx, "nonexistent.invalid.:7000", 1500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "did not resolve") {
		t.Fatalf("an unresolvable name: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("waited %s past a 1.5s timeout", d)
	}
}
