package raftstore

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/internal/freeport"
	"github.com/sourceraft/sourceraft/internal/pki"
	"github.com/sourceraft/sourceraft/storage"
)

// testCluster is real raft nodes over TCP on loopback with mutual TLS.
type testCluster struct {
	t     *testing.T
	ca    *pki.CA
	nodes []*Node
	cfgs  []Config
}

func newTestCluster(t *testing.T, n int, tweak func(*Config)) *testCluster {
	t.Helper()
	ca, err := pki.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	tc := &testCluster{t: t, ca: ca}
	var peers []clusterapi.Peer
	for i := 0; i < n; i++ {
		peers = append(peers, clusterapi.Peer{ID: fmt.Sprintf("n%d", i), RaftAddr: freeAddr(t)})
	}
	for i := 0; i < n; i++ {
		pair, err := ca.IssueLoopback(peers[i].ID)
		if err != nil {
			t.Fatal(err)
		}
		tlsCfg, err := ca.TLSConfig(pair)
		if err != nil {
			t.Fatal(err)
		}
		cfg := Config{
			NodeID: peers[i].ID, Dir: t.TempDir(), RaftBind: peers[i].RaftAddr, Peers: peers,
			TLS: NewTLSFilesFromConfig(tlsCfg), NoSync: true,
			HeartbeatTimeout: 500 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond,
		}
		if tweak != nil {
			tweak(&cfg)
		}
		tc.cfgs = append(tc.cfgs, cfg)
		tc.nodes = append(tc.nodes, nil)
		tc.start(i)
	}
	t.Cleanup(func() {
		for _, nd := range tc.nodes {
			if nd != nil {
				nd.Close()
			}
		}
	})
	return tc
}

func (tc *testCluster) start(i int) {
	tc.t.Helper()
	nd := New(tc.cfgs[i])
	if err := nd.Open(); err != nil {
		tc.t.Fatalf("open %s: %v", tc.cfgs[i].NodeID, err)
	}
	tc.nodes[i] = nd
}

func (tc *testCluster) stop(i int) {
	tc.t.Helper()
	if err := tc.nodes[i].Close(); err != nil {
		tc.t.Fatalf("close %s: %v", tc.cfgs[i].NodeID, err)
	}
	tc.nodes[i] = nil
}

func (tc *testCluster) leader() (int, *Node) {
	tc.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		for i, nd := range tc.nodes {
			if nd != nil && nd.IsLeader() {
				return i, nd
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	tc.t.Fatal("no leader elected")
	return -1, nil
}

// converge waits until every running node applied the leader's last index
// and checks their stores are byte-for-byte equal.
func (tc *testCluster) converge() {
	tc.t.Helper()
	_, l := tc.leader()
	target := l.raft.LastIndex()
	var want string
	for _, nd := range tc.nodes {
		if nd == nil {
			continue
		}
		if err := nd.WaitForAppliedIndex(target, 15*time.Second); err != nil {
			tc.t.Fatalf("%s: %v", nd.cfg.NodeID, err)
		}
		h, _, err := nd.fsm.ContentHash()
		if err != nil {
			tc.t.Fatal(err)
		}
		if want == "" {
			want = h
		} else if h != want {
			tc.t.Fatalf("%s content hash %s, want %s", nd.cfg.NodeID, h, want)
		}
	}
}

func freeAddr(t *testing.T) string {
	a, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func randomBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

func art(name, file string) storage.Artifact {
	return storage.Artifact{Kind: "gitrepository", Namespace: "default", Name: name, File: file}
}

func mustKey(t *testing.T, a storage.Artifact) storage.Key {
	t.Helper()
	k, err := storage.KeyOf(a)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func readAll(t *testing.T, nd *Node, a storage.Artifact) []byte {
	t.Helper()
	rc, err := nd.Retrieve(context.Background(), a)
	if err != nil {
		t.Fatalf("%s: retrieve %s: %v", nd.cfg.NodeID, a.Path(), err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("%s: read %s: %v", nd.cfg.NodeID, a.Path(), err)
	}
	return b
}

func TestStoreReplicatesToEveryNode(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	_, l := tc.leader()
	content := randomBytes(1, 3*storage.MaxChunkSize+123)
	a := art("app", "a.tar.gz")
	a.Revision = "main@sha1:abc"
	if err := l.Store(context.Background(), &a, bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	if a.Size != int64(len(content)) || a.Digest == "" {
		t.Fatalf("stored artifact %+v", a)
	}
	tc.converge()
	for _, nd := range tc.nodes {
		if got := readAll(t, nd, a); !bytes.Equal(got, content) {
			t.Fatalf("%s returned %d bytes that differ from the %d stored", nd.cfg.NodeID, len(got), len(content))
		}
		c, err := nd.OpenArtifact(mustKey(t, a))
		if err != nil {
			t.Fatalf("%s: open %v", nd.cfg.NodeID, err)
		}
		c.Close()
		if got := c.Artifact; got.Digest != a.Digest || got.Revision != a.Revision {
			t.Fatalf("%s: open %+v", nd.cfg.NodeID, got)
		}
	}
}

// TestMissingArtifactAfterBarrierIsNotFoundAtOnce ends the log with
// entries the FSM never sees (a barrier, as a new leader's no-op would):
// a replica that applied every command must answer "not found" at once,
// not wait for a command to raise its applied index (it used to wait out
// the whole deadline, and a new leader waited for its next command before
// reconciling).
func TestMissingArtifactAfterBarrierIsNotFoundAtOnce(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	_, l := tc.leader()
	a := art("app", "a.tar.gz")
	if err := l.Store(context.Background(), &a, bytes.NewReader([]byte("x"))); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := l.Barrier(5 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	// Every replica holds and knows committed the barriers.
	last := l.Status().LastIndex
	deadline := time.Now().Add(10 * time.Second)
	for _, nd := range tc.nodes {
		for st := nd.Status(); st.LastIndex < last || st.CommitIndex < last; st = nd.Status() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: last %d commit %d, leader's last %d", nd.cfg.NodeID, st.LastIndex, st.CommitIndex, last)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for _, nd := range tc.nodes {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		start := time.Now()
		_, err := nd.WaitFor(ctx, mustKey(t, art("app", "missing.tar.gz")))
		cancel()
		if !errors.Is(err, storage.ErrNotFound) || time.Since(start) > time.Second {
			t.Fatalf("%s: WaitFor a missing artifact = %v after %v, want ErrNotFound at once", nd.cfg.NodeID, err, time.Since(start))
		}
	}
}

// TestMissingArtifactIsNotFoundUnderSteadyUploads asks every replica, three
// times, for an artifact that does not exist while eight uploaders keep the
// log busy: each must answer "not found" within the 5 s a GET waits before
// asking peers, not wait for an applied index that the next upload always
// moves on (the chaos suite saw every replica hold a collected artifact's
// request for the whole 5 s; the leader did so here before the fix).
func TestMissingArtifactIsNotFoundUnderSteadyUploads(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	_, l := tc.leader()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	const uploaders = 8
	uploads := make(chan error, uploaders)
	for u := range uploaders {
		go func() {
			content := bytes.Repeat([]byte("u"), 600<<10) // two chunks
			var err error
			for i := 0; i < 10000 && ctx.Err() == nil && err == nil; i++ {
				a := art(fmt.Sprintf("busy%d", u), fmt.Sprintf("%d.tar.gz", i))
				err = l.Store(ctx, &a, bytes.NewReader(content))
			}
			if ctx.Err() != nil {
				err = nil
			}
			uploads <- err
		}()
	}
	time.Sleep(500 * time.Millisecond) // uploads under way
	for range 3 {
		for _, nd := range tc.nodes {
			wctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := nd.WaitFor(wctx, mustKey(t, art("app", "missing.tar.gz")))
			cancel()
			if !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("%s: WaitFor a missing artifact under steady uploads = %v, want ErrNotFound", nd.cfg.NodeID, err)
			}
		}
	}
	stop()
	for range uploaders {
		if err := <-uploads; err != nil {
			t.Fatalf("uploads: %v", err)
		}
	}
}

// TestNewLeaderIsCaughtUpWithoutANewCommand is the other half: after an
// election the new leader's log ends in its own no-op, which the FSM never
// sees. The new leader must count itself caught up at once, without
// waiting for the next command: its barrier (what it waits for before it
// reconciles) returns, and its applied index (what /v1/cluster reports and
// WaitForAppliedIndex waits for) reaches the end of its log.
func TestNewLeaderIsCaughtUpWithoutANewCommand(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	li, l := tc.leader()
	ctx := context.Background()
	a := art("app", "a.tar.gz")
	if err := l.Store(ctx, &a, bytes.NewReader([]byte("x"))); err != nil {
		t.Fatal(err)
	}
	// Every node registered while the first leader leads, so the next one
	// has no command of its own to propose when it takes over.
	for _, nd := range tc.nodes {
		if err := l.RegisterPeer(ctx, nd.self()); err != nil {
			t.Fatal(err)
		}
	}
	tc.converge()
	before := l.Status().LastIndex
	tc.stop(li)
	_, nl := tc.leader()
	// raft reports a leader before it appends its no-op: wait for it.
	st := nl.Status()
	for deadline := time.Now().Add(5 * time.Second); st.LastIndex <= before && time.Now().Before(deadline); st = nl.Status() {
		time.Sleep(10 * time.Millisecond)
	}
	if applied := nl.fsm.AppliedIndex(); applied >= st.LastIndex {
		t.Fatalf("%s: the FSM applied %d of a log ending at %d: the log does not end in entries the FSM never sees", nl.cfg.NodeID, applied, st.LastIndex)
	}
	start := time.Now()
	if err := nl.Barrier(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := nl.WaitForAppliedIndex(nl.Status().LastIndex, 2*time.Second); err != nil {
		t.Fatalf("%s: new leader not caught up with its own log without a new command: %v", nl.cfg.NodeID, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("%s: new leader caught up %v after its election, want at once", nl.cfg.NodeID, d)
	}
	if st := nl.Status(); st.AppliedIndex != st.LastIndex {
		t.Fatalf("%s reports applied index %d of %d", nl.cfg.NodeID, st.AppliedIndex, st.LastIndex)
	}
}

func TestWritesOnFollowerAreRefused(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	li, _ := tc.leader()
	f := tc.nodes[(li+1)%3]
	a := art("app", "a.tar.gz")
	if err := f.Store(context.Background(), &a, bytes.NewReader([]byte("x"))); !errors.Is(err, storage.ErrNotLeader) {
		t.Fatalf("store on follower: %v, want ErrNotLeader", err)
	}
	if err := f.GarbageCollect(context.Background(), storage.GCPolicy{}); !errors.Is(err, storage.ErrNotLeader) {
		t.Fatalf("gc on follower: %v, want ErrNotLeader", err)
	}
}

func TestRejectedStoresLeaveNothing(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) { c.MaxArtifactSize = 2 * storage.MaxChunkSize })
	_, l := tc.leader()
	ctx := context.Background()

	big := art("big", "big.tar.gz")
	err := l.Store(ctx, &big, bytes.NewReader(randomBytes(2, 2*storage.MaxChunkSize+1)))
	if !errors.Is(err, storage.ErrTooLarge) {
		t.Fatalf("oversized store: %v, want ErrTooLarge", err)
	}
	wrong := art("wrong", "w.tar.gz")
	wrong.Digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
	if err := l.Store(ctx, &wrong, bytes.NewReader([]byte("content"))); !errors.Is(err, storage.ErrDigestMismatch) {
		t.Fatalf("mismatched digest: %v, want ErrDigestMismatch", err)
	}
	// The alias name is the current artifact's on every replica: no stored
	// artifact may take it.
	alias := art("alias", "latest.tar.gz")
	if err := l.Store(ctx, &alias, bytes.NewReader([]byte("content"))); !errors.Is(err, storage.ErrInvalidPath) {
		t.Fatalf("store under the alias name: %v, want ErrInvalidPath", err)
	}
	tc.converge()
	for _, nd := range tc.nodes {
		st, err := nd.fsm.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if st.Artifacts != 0 || st.Uploads != 0 || st.Blobs != 0 {
			t.Fatalf("%s kept state after rejected stores: %+v", nd.cfg.NodeID, st)
		}
	}
}

// blockingReader yields n bytes and then blocks until released.
type blockingReader struct {
	r       io.Reader
	release chan struct{}
}

func (b *blockingReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		<-b.release
		return 0, errors.New("upload interrupted")
	}
	return n, err
}

func TestUploadOfLostLeaderIsAborted(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	li, l := tc.leader()
	br := &blockingReader{r: bytes.NewReader(randomBytes(3, 2*storage.MaxChunkSize)), release: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		a := art("app", "a.tar.gz")
		errc <- l.Store(context.Background(), &a, br)
	}()
	// Wait until the chunks are applied on a follower, then lose the leader.
	f := tc.nodes[(li+1)%3]
	deadline := time.Now().Add(10 * time.Second)
	for {
		ups, _ := f.fsm.Uploads()
		if len(ups) == 1 && ups[0].Chunks == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("upload never reached the follower: %+v", ups)
		}
		time.Sleep(20 * time.Millisecond)
	}
	tc.stop(li)
	close(br.release)
	if err := <-errc; err == nil {
		t.Fatal("store on a closed leader succeeded")
	}
	tc.leader()
	deadline = time.Now().Add(15 * time.Second)
	for _, nd := range tc.nodes {
		for nd != nil {
			ups, err := nd.fsm.Uploads()
			if err == nil && len(ups) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still holds the dead upload: %+v", nd.cfg.NodeID, ups)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func TestGarbageCollectRemovesOnEveryNode(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	_, l := tc.leader()
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	var arts []storage.Artifact
	for i := 0; i < 4; i++ {
		a := art("app", fmt.Sprintf("rev%d.tar.gz", i))
		a.LastUpdateTime = now.Add(time.Duration(i-4) * time.Minute)
		if err := l.Store(ctx, &a, bytes.NewReader(randomBytes(int64(i), 1000))); err != nil {
			t.Fatal(err)
		}
		arts = append(arts, a)
	}
	other := art("other", "only.tar.gz")
	other.LastUpdateTime = now.Add(-time.Hour)
	if err := l.Store(ctx, &other, bytes.NewReader([]byte("only"))); err != nil {
		t.Fatal(err)
	}
	if err := l.GarbageCollect(ctx, storage.GCPolicy{TTL: 150 * time.Second, Records: 2}); err != nil {
		t.Fatal(err)
	}
	tc.converge()
	for _, nd := range tc.nodes {
		list, err := nd.List(ctx, storage.Filter{})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, a := range list {
			got = append(got, a.File)
		}
		// rev3 is current, rev2 is within TTL and records; the only artifact
		// of "other" is current however old it is.
		want := []string{"rev2.tar.gz", "rev3.tar.gz", "only.tar.gz"}
		if fmt.Sprint(sortedCopy(got)) != fmt.Sprint(sortedCopy(want)) {
			t.Fatalf("%s kept %v, want %v", nd.cfg.NodeID, got, want)
		}
		if _, err := nd.Retrieve(ctx, arts[0]); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("%s: collected artifact still retrievable: %v", nd.cfg.NodeID, err)
		}
	}
}

func TestRestartedFollowerCatchesUpFromSnapshot(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) {
		c.SnapshotBytes = 2 * storage.MaxChunkSize
		c.TrailingLogs = 4
	})
	li, l := tc.leader()
	ctx := context.Background()
	fi := (li + 1) % 3
	tc.stop(fi)
	want := map[string][]byte{}
	for i := 0; i < 6; i++ {
		a := art(fmt.Sprintf("app%d", i), "a.tar.gz")
		content := randomBytes(int64(10+i), storage.MaxChunkSize+i)
		if err := l.Store(ctx, &a, bytes.NewReader(content)); err != nil {
			t.Fatal(err)
		}
		want[a.Path()] = content
	}
	// Let the byte-triggered snapshot run and compact the log past the
	// follower's position.
	deadline := time.Now().Add(15 * time.Second)
	for {
		metas, _ := l.snapshots.List()
		first, _ := l.logStore.FirstIndex()
		if len(metas) > 0 && first > 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("leader never snapshotted and compacted (snapshots %d, first index %d)", len(metas), first)
		}
		time.Sleep(100 * time.Millisecond)
	}
	tc.start(fi)
	tc.converge()
	for p, content := range want {
		a, _ := storage.ParsePath(p)
		if got := readAll(t, tc.nodes[fi], a); !bytes.Equal(got, content) {
			t.Fatalf("restarted follower serves wrong bytes for %s", p)
		}
	}
	// A restart on its own data re-applies nothing: same index, same hash.
	before, _, err := tc.nodes[fi].fsm.ContentHash()
	if err != nil {
		t.Fatal(err)
	}
	tc.stop(fi)
	tc.start(fi)
	tc.converge()
	after, _, err := tc.nodes[fi].fsm.ContentHash()
	if err != nil {
		t.Fatal(err)
	}
	if before != after {
		t.Fatalf("content hash changed across restart: %s -> %s", before, after)
	}
}

func TestTransportRefusesPeersWithoutClusterCertificate(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	tc.leader()
	if err := refusesForeignPeers(tc.cfgs[0].RaftBind, tc.ca.Cert); err != nil {
		t.Fatal(err)
	}
}

// TestForeignPeerCheckFailsAgainstPermissiveTransport is the negative
// control of the test above: against a node that asks for a client
// certificate but accepts any, or none, every part of the same check must
// fail, or that part proves nothing.
func TestForeignPeerCheckFailsAgainstPermissiveTransport(t *testing.T) {
	tc := newTestCluster(t, 1, func(c *Config) { c.TLS.config.ClientAuth = tls.RequestClientCert })
	tc.leader()
	err := refusesForeignPeers(tc.cfgs[0].RaftBind, tc.ca.Cert)
	if err == nil {
		t.Fatal("the foreign-certificate check passed against a transport that accepts any client certificate")
	}
	for _, part := range []string{"a peer with a foreign certificate: ", "a peer without a certificate: ", "a Raft RPC with a foreign certificate"} {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("against a permissive transport the check did not fail on %q:\n%v", part, err)
		}
	}
	t.Logf("the check fails as it must:\n%v", err)
}

// refusesForeignPeers returns nil when the Raft transport at target
// refuses peers without a certificate from the cluster CA: a client with
// a foreign certificate and one without any get a TLS alert from the
// server naming the certificate (a timeout is not a refusal: Raft's
// transport never writes first, so a server that accepted the peer also
// stays silent), and a Raft RPC sent with the foreign certificate fails
// with such an alert instead of being answered.
func refusesForeignPeers(target string, clusterCA *x509.Certificate) error {
	rogueCA, err := pki.NewCA("rogue")
	if err != nil {
		return err
	}
	pair, err := rogueCA.IssueLoopback("rogue")
	if err != nil {
		return err
	}
	rogue, err := rogueCA.TLSConfig(pair)
	if err != nil {
		return err
	}
	// Trust the cluster's server certificate and present the foreign client
	// one whatever CAs the server asks for (a Go client otherwise sends
	// none): only the server's check of the client can fail the session.
	rogue.RootCAs.AddCert(clusterCA)
	rogue.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &rogue.Certificates[0], nil }
	var errs []error
	if err := expectAlert(handshakeAndRead(target, rogue), badCertificate...); err != nil {
		errs = append(errs, fmt.Errorf("a peer with a foreign certificate: %w", err))
	}
	noCert := &tls.Config{RootCAs: rogue.RootCAs, ServerName: "127.0.0.1"}
	if err := expectAlert(handshakeAndRead(target, noCert), noCertificate...); err != nil {
		errs = append(errs, fmt.Errorf("a peer without a certificate: %w", err))
	}
	// A node configured with the foreign CA asks for a vote (term 0, so a
	// node that answers does not change state): the RPC must not go through.
	sl, err := newStreamLayer("127.0.0.1:0", "127.0.0.1:1", rogue)
	if err != nil {
		return err
	}
	trans := raft.NewNetworkTransport(sl, 1, 5*time.Second, io.Discard)
	defer trans.Close()
	var resp raft.RequestVoteResponse
	err = trans.RequestVote("n0", raft.ServerAddress(target), &raft.RequestVoteRequest{
		RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("rogue"), Addr: []byte("127.0.0.1:1")},
	}, &resp)
	if err == nil {
		errs = append(errs, fmt.Errorf("a Raft RPC with a foreign certificate went through: %+v", resp))
	} else if err := expectAlert(err, badCertificate...); err != nil {
		errs = append(errs, fmt.Errorf("a Raft RPC with a foreign certificate: %w", err))
	}
	return errors.Join(errs...)
}

// handshakeAndRead dials target with cfg and reads: with TLS 1.3 the
// client's handshake completes before the server has checked the client's
// certificate, so the server's verdict arrives with the first read.
func handshakeAndRead(target string, cfg *tls.Config) error {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", target, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetReadDeadline(time.Now().Add(3 * time.Second)); err != nil {
		return err
	}
	_, err = conn.Read(make([]byte, 1))
	return err
}

// The TLS alerts a server sends when it rejects a client's certificate
// (crypto/tls sends "bad certificate" when verification fails) or, under
// TLS 1.3, its absence.
var (
	badCertificate = []string{"tls: bad certificate", "tls: unknown certificate authority"}
	noCertificate  = append([]string{"tls: certificate required"}, badCertificate...)
)

// expectAlert returns nil if err carries one of the TLS alerts the server
// sent, else what err is instead. Raft's transport keeps only the text of
// the error it read, so the alert is matched in the text.
func expectAlert(err error, alerts ...string) error {
	if err == nil {
		return errors.New("the session stayed open: no alert from the server")
	}
	if ne, ok := errors.AsType[net.Error](err); (ok && ne.Timeout()) || strings.Contains(err.Error(), "i/o timeout") {
		return fmt.Errorf("timed out without an alert from the server: %w", err)
	}
	for _, a := range alerts {
		if strings.Contains(err.Error(), "remote error: "+a) {
			return nil
		}
	}
	return fmt.Errorf("failed, but not with an alert %q from the server: %w", alerts, err)
}

func TestOpenRefusesPlaintextWithoutInsecureFlag(t *testing.T) {
	nd := New(Config{NodeID: "a", Dir: t.TempDir(), RaftBind: freeAddr(t)})
	if err := nd.Open(); !errors.Is(err, ErrNoTLS) {
		t.Fatalf("open without TLS: %v, want ErrNoTLS", err)
	}
}

func sortedCopy(s []string) []string {
	c := append([]string(nil), s...)
	sort.Strings(c)
	return c
}
