// Package cluster runs real source-controller processes on loopback: the
// local cluster of `make run`, the end-to-end tests and the benchmarks.
// Each replica gets its own data directory, ports and mTLS certificate.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sourceraft/sourceraft/clusterapi"
	"github.com/sourceraft/sourceraft/internal/freeport"
	"github.com/sourceraft/sourceraft/internal/pki"
)

// Options shape a cluster.
type Options struct {
	// Binary is the source-controller executable.
	Binary string
	// Dir holds one directory per replica, the certificates and the token.
	Dir      string
	Replicas int
	// Args are extra flags for every replica.
	Args []string
	// Wrap, when set, rewrites a replica's command line, e.g. to run it in
	// its own mount namespace with a small disk.
	Wrap func(r *Replica, argv []string) []string
	// Stdout receives every replica's log lines prefixed with its id; nil
	// writes them only to <dir>/<id>/log.
	Stdout io.Writer
	// Netns runs each replica in a network namespace of its own on a
	// bridge, so Partition can cut it off its peers; replicas reach the
	// caller's servers through Forward. Needs root and iproute2.
	Netns bool
}

// Replica is one source-controller process.
type Replica struct {
	ID                                                      string
	Dir                                                     string
	RaftAddr, APIAddr, StorageAddr, HealthAddr, MetricsAddr string
	// Netns is the replica's network namespace under Options.Netns.
	Netns string

	mu   sync.Mutex
	cmd  *exec.Cmd
	exit chan struct{}
}

// Cluster is a set of replicas sharing a CA and an API token.
type Cluster struct {
	opts     Options
	ca       *pki.CA
	Token    string
	Replicas []*Replica
	// client asks the health listeners; api the internal APIs, through it.
	client *http.Client
	api    *clusterapi.Client
	// uploads has no overall timeout: a PUT is bounded by its context, as
	// a GiB at disk speed outlasts the minute any other request may take.
	uploads *clusterapi.Client
	net     *network
}

// New prepares directories, ports and certificates; Start runs the processes.
func New(opts Options) (*Cluster, error) {
	if opts.Replicas < 1 {
		return nil, errors.New("cluster needs at least one replica")
	}
	ca, err := pki.NewCA("sourceraft-test-ca")
	if err != nil {
		return nil, err
	}
	c := &Cluster{opts: opts, Token: "token-" + strconv.FormatInt(time.Now().UnixNano(), 36),
		client: &http.Client{Timeout: 60 * time.Second}}
	c.api = clusterapi.NewClient(c.client, c.Token)
	c.uploads = clusterapi.NewClient(&http.Client{}, c.Token)
	if err := os.WriteFile(filepath.Join(opts.Dir, "token"), []byte(c.Token), 0o600); err != nil {
		return nil, fmt.Errorf("write token: %w", err)
	}
	c.ca = ca
	if opts.Netns {
		if c.net, err = newNetwork(); err != nil {
			return nil, err
		}
	}
	for i := 0; i < opts.Replicas; i++ {
		if _, err := c.newReplica(); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

func (c *Cluster) newReplica() (int, error) {
	i := len(c.Replicas)
	r := &Replica{ID: fmt.Sprintf("replica-%d", i), Dir: filepath.Join(c.opts.Dir, fmt.Sprintf("replica-%d", i))}
	if err := os.MkdirAll(filepath.Join(r.Dir, "data"), 0o750); err != nil {
		return 0, err
	}
	var ports []string
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	if c.net != nil {
		ns, addr, err := c.net.addReplica(i)
		if err != nil {
			return 0, err
		}
		r.Netns, ips = ns, append(ips, addr)
		// A namespace of its own: every port is free.
		for p := 7000; p < 7005; p++ {
			ports = append(ports, net.JoinHostPort(addr.String(), strconv.Itoa(p)))
		}
	} else {
		var err error
		if ports, err = c.freePorts(5); err != nil {
			return 0, err
		}
	}
	r.RaftAddr, r.APIAddr, r.StorageAddr, r.HealthAddr, r.MetricsAddr = ports[0], ports[1], ports[2], ports[3], ports[4]
	pair, err := c.ca.Issue(r.ID, []string{"localhost"}, ips)
	if err != nil {
		return 0, err
	}
	if _, _, _, err := c.ca.WriteFiles(r.Dir, "raft", pair); err != nil {
		return 0, err
	}
	c.Replicas = append(c.Replicas, r)
	return i, nil
}

// AddReplica prepares one more replica, outside the bootstrap set: it
// starts without --peers and joins the running cluster through --join.
// Start it with StartReplica. Not safe to call while other goroutines
// read Replicas.
func (c *Cluster) AddReplica() (int, error) { return c.newReplica() }

// Peers is the --peers value naming the bootstrap set: the replicas the
// cluster was created with.
func (c *Cluster) Peers() string {
	var parts []string
	for _, r := range c.Replicas[:c.opts.Replicas] {
		parts = append(parts, r.ID+"="+r.RaftAddr)
	}
	return strings.Join(parts, ",")
}

// join is the --join value: the bootstrap set's internal API addresses.
func (c *Cluster) join() string {
	var parts []string
	for _, r := range c.Replicas[:c.opts.Replicas] {
		parts = append(parts, r.APIAddr)
	}
	return strings.Join(parts, ",")
}

// WipeData deletes replica i's data directory (it must be stopped), like
// a pod coming back with an empty volume.
func (c *Cluster) WipeData(i int) error {
	if c.Running(i) {
		return fmt.Errorf("%s is running", c.Replicas[i].ID)
	}
	dir := filepath.Join(c.Replicas[i].Dir, "data")
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.MkdirAll(dir, 0o750)
}

// RemoveNode asks replica via's internal API to take replica i out of the
// cluster (DELETE /v1/nodes/<id>, forwarded to the leader).
func (c *Cluster) RemoveNode(ctx context.Context, via, i int) error {
	return c.api.RemoveNode(ctx, c.Replicas[via].APIAddr, c.Replicas[i].ID)
}

func (c *Cluster) argv(r *Replica) []string {
	argv := []string{c.opts.Binary,
		"--node-id=" + r.ID,
		"--raft-addr=" + r.RaftAddr,
		"--raft-advertise-addr=" + r.RaftAddr,
		"--join=" + c.join(),
		"--storage-path=" + filepath.Join(r.Dir, "data"),
		"--storage-addr=" + r.StorageAddr,
		"--storage-adv-addr=" + r.StorageAddr,
		"--api-addr=" + r.APIAddr,
		"--health-addr=" + r.HealthAddr,
		"--metrics-addr=" + r.MetricsAddr,
		"--api-token-file=" + filepath.Join(c.opts.Dir, "token"),
		"--raft-tls-cert=" + filepath.Join(r.Dir, "raft.crt"),
		"--raft-tls-key=" + filepath.Join(r.Dir, "raft.key"),
		"--raft-tls-ca=" + filepath.Join(r.Dir, "ca.crt"),
	}
	if c.isBootstrap(r) {
		argv = append(argv, "--peers="+c.Peers())
	}
	argv = append(argv, c.opts.Args...)
	if c.opts.Wrap != nil {
		argv = c.opts.Wrap(r, argv)
	}
	if r.Netns != "" {
		// ip execs the command in place: the pid stays the replica's.
		argv = append([]string{"ip", "netns", "exec", r.Netns}, argv...)
	}
	return argv
}

func (c *Cluster) isBootstrap(r *Replica) bool {
	for _, b := range c.Replicas[:c.opts.Replicas] {
		if b == r {
			return true
		}
	}
	return false
}

// SetArgs replaces the extra flags of every replica from its next start,
// as an operator changing the StatefulSet's arguments does.
func (c *Cluster) SetArgs(args []string) { c.opts.Args = args }

// Start runs every replica that is not running.
func (c *Cluster) Start() error {
	for i := range c.Replicas {
		if err := c.StartReplica(i); err != nil {
			return err
		}
	}
	return nil
}

// StartReplica runs replica i on its existing data directory.
func (c *Cluster) StartReplica(i int) error {
	r := c.Replicas[i]
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		return nil
	}
	logf, err := os.OpenFile(filepath.Join(r.Dir, "log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	argv := c.argv(r)
	cmd := exec.Command(argv[0], argv[1:]...)
	var out io.Writer = logf
	if c.opts.Stdout != nil {
		out = io.MultiWriter(logf, &prefixWriter{prefix: r.ID + " ", w: c.opts.Stdout})
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", r.ID, err)
	}
	exit := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(exit)
	}()
	r.cmd, r.exit = cmd, exit
	return nil
}

// Kill sends SIGKILL to replica i and waits for it to exit.
func (c *Cluster) Kill(i int) { c.signal(i, syscall.SIGKILL) }

// Stop sends SIGTERM to replica i and waits for it to exit.
func (c *Cluster) Stop(i int) { c.signal(i, syscall.SIGTERM) }

// Pause sends SIGSTOP to replica i's process group: the process stays
// alive but answers nothing until Resume, like a long GC pause or a
// frozen VM. It reports whether a running process was stopped.
func (c *Cluster) Pause(i int) bool { return c.signalNoWait(i, syscall.SIGSTOP) }

// Resume sends SIGCONT to replica i's process group after Pause.
func (c *Cluster) Resume(i int) bool { return c.signalNoWait(i, syscall.SIGCONT) }

func (c *Cluster) signalNoWait(i int, sig syscall.Signal) bool {
	r := c.Replicas[i]
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.alive() && syscall.Kill(-r.cmd.Process.Pid, sig) == nil
}

// Ready fetches GET /readyz from replica i and returns nil on 200.
func (c *Cluster) Ready(ctx context.Context, i int) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.Replicas[i].HealthAddr+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: /readyz: %s: %s", c.Replicas[i].ID, resp.Status, strings.TrimSpace(string(msg)))
	}
	return nil
}

// Running reports whether replica i has a live process.
func (c *Cluster) Running(i int) bool {
	r := c.Replicas[i]
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.alive()
}

// alive reports whether the replica's process is started and not exited;
// the caller holds r.mu.
func (r *Replica) alive() bool {
	if r.cmd == nil {
		return false
	}
	select {
	case <-r.exit:
		return false
	default:
		return true
	}
}

// PID is the process id of replica i, or 0 when it is not running. Under
// a Wrap it is the wrapper's pid, which may not be the binary's.
func (c *Cluster) PID(i int) int {
	r := c.Replicas[i]
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil || r.cmd.Process == nil {
		return 0
	}
	select {
	case <-r.exit:
		return 0
	default:
		return r.cmd.Process.Pid
	}
}

func (c *Cluster) signal(i int, sig syscall.Signal) {
	r := c.Replicas[i]
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return
	}
	// The whole process group: a Wrap may have put the binary under a shell.
	_ = syscall.Kill(-r.cmd.Process.Pid, sig)
	if sig != syscall.SIGKILL {
		// A paused replica handles SIGTERM only once it runs again.
		_ = syscall.Kill(-r.cmd.Process.Pid, syscall.SIGCONT)
	}
	select {
	case <-r.exit:
	case <-time.After(20 * time.Second):
		_ = syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
		<-r.exit
	}
	r.cmd = nil
}

// Close stops every replica and removes the network namespaces.
func (c *Cluster) Close() {
	for i := range c.Replicas {
		c.Stop(i)
	}
	if c.net != nil {
		c.net.close()
	}
}

// LogTail returns the last n bytes of replica i's log (<dir>/<id>/log), for
// a failing test to print; a log that cannot be read gives the error text.
func (c *Cluster) LogTail(i, n int) []byte {
	b, err := os.ReadFile(filepath.Join(c.Replicas[i].Dir, "log"))
	if err != nil {
		return []byte(err.Error())
	}
	return b[max(0, len(b)-n):]
}

// errNoNetns is returned by the network faults of a cluster created
// without Options.Netns.
var errNoNetns = errors.New("cluster: network faults need Options.Netns")

// Partition cuts replica i off from every other replica; the caller keeps
// reaching it and it keeps reaching Forward's addresses.
func (c *Cluster) Partition(i int) error {
	if c.net == nil {
		return errNoNetns
	}
	return c.net.partition(i)
}

// Reconnect ends Partition(i).
func (c *Cluster) Reconnect(i int) error {
	if c.net == nil {
		return errNoNetns
	}
	return c.net.reconnect(i)
}

// Forward makes target, a server on the caller's loopback, reachable from
// the replicas' namespaces and returns the address they dial. Without
// Options.Netns the replicas share the caller's loopback: target itself.
func (c *Cluster) Forward(target string) (string, error) {
	if c.net == nil {
		return target, nil
	}
	return c.net.forward(target)
}

// Status fetches GET /v1/cluster from replica i.
func (c *Cluster) Status(ctx context.Context, i int) (clusterapi.Status, error) {
	s, err := c.api.Status(ctx, c.Replicas[i].APIAddr)
	if err != nil {
		return s, fmt.Errorf("%s: %w", c.Replicas[i].ID, err)
	}
	return s, nil
}

// ContentHash fetches GET /v1/content-hash from replica i: a hash of its
// whole store, for checking that replicas converged.
func (c *Cluster) ContentHash(ctx context.Context, i int) (clusterapi.ContentHash, error) {
	h, err := c.api.ContentHash(ctx, c.Replicas[i].APIAddr)
	if err != nil {
		return h, fmt.Errorf("%s: %w", c.Replicas[i].ID, err)
	}
	return h, nil
}

// WaitLeader waits until a running replica reports itself leader with
// every running replica's address registered, and returns its index.
func (c *Cluster) WaitLeader(ctx context.Context) (int, error) {
	for {
		running := 0
		for i := range c.Replicas {
			if !c.Running(i) {
				continue
			}
			running++
			s, err := c.Status(ctx, i)
			if err == nil && s.State == "Leader" && c.registered(s) {
				return i, nil
			}
		}
		if running == 0 {
			return -1, errors.New("wait for leader: no replica is running")
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("wait for leader: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) registered(s clusterapi.Status) bool {
	for i, r := range c.Replicas {
		if !c.Running(i) {
			continue
		}
		found := false
		for _, p := range s.Peers {
			if p.ID == r.ID && p.APIAddr != "" && p.StorageAddr != "" {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// WaitVoters waits until a leader's configuration holds exactly the
// replicas named want, all of them voters. observe, when set, sees every
// status a leader reports meanwhile.
func (c *Cluster) WaitVoters(ctx context.Context, want []string, observe func(clusterapi.Status)) error {
	want = slices.Sorted(slices.Values(want))
	var last []string
	for {
		for i := range c.Replicas {
			if !c.Running(i) {
				continue
			}
			s, err := c.Status(ctx, i)
			if err != nil || s.State != "Leader" {
				continue
			}
			if observe != nil {
				observe(s)
			}
			var members, voters []string
			for _, p := range s.Peers {
				members = append(members, p.ID+"/"+p.Suffrage)
				if p.Suffrage == "Voter" {
					voters = append(voters, p.ID)
				}
			}
			sort.Strings(members)
			sort.Strings(voters)
			last = members
			if len(members) == len(want) && slices.Equal(voters, want) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("members %v, want voters %v: %w", last, want, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitApplied waits until replica i has applied at least index.
func (c *Cluster) WaitApplied(ctx context.Context, i int, index uint64) error {
	for {
		s, err := c.Status(ctx, i)
		if err == nil && s.AppliedIndex >= index {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: wait for applied index %d: %w", c.Replicas[i].ID, index, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Put stores body at path through replica i's internal API.
func (c *Cluster) Put(ctx context.Context, i int, path string, body io.Reader, size int64) (clusterapi.PutResult, error) {
	return c.uploads.PutArtifact(ctx, c.Replicas[i].APIAddr, path, body, size)
}

// ArtifactURL is the URL of path on replica i's artifact server.
func (c *Cluster) ArtifactURL(i int, path string) string {
	return "http://" + c.Replicas[i].StorageAddr + "/" + path
}

// freePorts returns n loopback addresses that are free now and were never
// handed out in this process before (freeport), so no two replicas share one.
func (c *Cluster) freePorts(n int) ([]string, error) {
	addrs := make([]string, n)
	for i := range addrs {
		a, err := freeport.Addr()
		if err != nil {
			return nil, err
		}
		addrs[i] = a
	}
	return addrs, nil
}

type prefixWriter struct {
	mu     sync.Mutex
	prefix string
	w      io.Writer
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := strings.IndexByte(string(p.buf), '\n')
		if i < 0 {
			break
		}
		fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.buf[:i])
		p.buf = p.buf[i+1:]
	}
	return len(b), nil
}
