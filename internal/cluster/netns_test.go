package cluster

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestPartitionCutsPeersNotTheCaller checks the network the chaos suite
// partitions: a partitioned replica's namespace reaches no other replica
// and none reaches it, while the caller reaches it and it reaches the
// caller's forwarded servers; Reconnect restores the rest.
func TestPartitionCutsPeersNotTheCaller(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test creates network namespaces and must run as root")
	}
	c, err := New(Options{Binary: "/nonexistent", Dir: t.TempDir(), Replicas: 3, Netns: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, r := range c.Replicas {
		inNetns(t, r.Netns, func() { serveID(t, r.RaftAddr, r.ID) })
	}
	caller, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go acceptID(caller, "caller")
	fwd, err := c.Forward(caller.Addr().String())
	if err != nil {
		t.Fatal(err)
	}

	// reach dials addr from replica from's namespace (-1: the caller's).
	reach := func(from int, addr string) error {
		var err error
		dial := func() { err = hello(addr) }
		if from < 0 {
			dial()
		} else {
			inNetns(t, c.Replicas[from].Netns, dial)
		}
		return err
	}
	expect := func(state string, from int, addr string, ok bool) {
		t.Helper()
		err := reach(from, addr)
		if ok && err != nil {
			t.Errorf("%s: %d → %s: %v", state, from, addr, err)
		}
		if !ok && err == nil {
			t.Errorf("%s: %d → %s connected, want it cut off", state, from, addr)
		}
	}
	r := c.Replicas
	expect("connected", 0, r[1].RaftAddr, true)
	expect("connected", 2, r[0].RaftAddr, true)
	expect("connected", -1, r[0].RaftAddr, true)
	expect("connected", 0, fwd, true)

	// Every replica in turn, twice: the bridge has the MAC of one of the
	// veths, and the second time the caller's side may already know the
	// replica's MAC and send it no ARP request to learn from.
	for k := range 2 * len(r) {
		v := k % len(r)
		other, third := (v+1)%3, (v+2)%3
		// The replica talks to the caller first, so it has the bridge's
		// MAC cached when the partition starts.
		expect("before", v, fwd, true)
		if err := c.Partition(v); err != nil {
			t.Fatal(err)
		}
		state := fmt.Sprintf("replica %d partitioned", v)
		expect(state, v, r[other].RaftAddr, false)
		expect(state, other, r[v].RaftAddr, false)
		expect(state, third, r[v].RaftAddr, false)
		expect(state, other, r[third].RaftAddr, true)
		expect(state, -1, r[v].RaftAddr, true)
		expect(state, -1, r[other].RaftAddr, true)
		expect(state, v, fwd, true)

		if err := c.Reconnect(v); err != nil {
			t.Fatal(err)
		}
		state = fmt.Sprintf("replica %d reconnected", v)
		expect(state, v, r[other].RaftAddr, true)
		expect(state, third, r[v].RaftAddr, true)
		expect(state, -1, r[v].RaftAddr, true)
		expect(state, v, fwd, true)
	}
}

// inNetns runs f on a thread moved into network namespace ns: sockets f
// creates live there. The thread stays locked and exits with the goroutine,
// so no other goroutine ever runs in that namespace.
func inNetns(t *testing.T, ns string, f func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		f()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func serveID(t *testing.T, addr, id string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Error(err)
		return
	}
	t.Cleanup(func() { ln.Close() })
	go acceptID(ln, id)
}

// acceptID answers every connection with id and a newline.
func acceptID(ln net.Listener, id string) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		fmt.Fprintln(conn, id)
		conn.Close()
	}
}

// hello connects to addr and reads the server's line.
func hello(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(500 * time.Millisecond))
	_, err = bufio.NewReader(conn).ReadString('\n')
	return err
}
