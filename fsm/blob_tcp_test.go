package fsm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
)

// TestWriteToTCP streams a blob into a real TCP connection twice, as an
// artifact download does.
func TestWriteToTCP(t *testing.T) {
	f := newFSM(t)
	content := pattern(3, 1<<20+12345)
	(&feeder{f: f}).ok(t, storeCmds(t, "u1", pathA, content, 512<<10, 512<<10, 12345)...)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for round := 0; round < 2; round++ {
		got := make(chan []byte, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				got <- nil
				return
			}
			defer c.Close()
			b, _ := io.ReadAll(c)
			got <- b
		}()
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		b, err := f.OpenBlob(digestOf(content))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Seek(100, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		n, err := b.WriteTo(conn.(*net.TCPConn))
		b.Close()
		conn.Close()
		if err != nil || n != int64(len(content)-100) {
			t.Fatalf("round %d: WriteTo = %d, %v", round, n, err)
		}
		if r := <-got; !bytes.Equal(r, content[100:]) {
			t.Fatalf("round %d: received %d bytes that differ from the blob", round, len(r))
		}
	}
}

// TestWriteToTCPSurvivesPageReuse sends a blob into a connection whose
// reader has not read yet, so the bytes wait in socket buffers after
// WriteTo returns; then the artifact is deleted and another one written,
// reusing the freed database pages. The reader must still receive the
// blob as it was: socket buffers must hold copies, not the file's pages
// (which sendfile would have queued by reference).
func TestWriteToTCPSurvivesPageReuse(t *testing.T) {
	f := newFSM(t)
	fd := &feeder{f: f}
	content := pattern(5, 1<<20+4321)
	fd.ok(t, storeCmds(t, "u1", pathA, content, 256<<10)...)

	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fdn uintptr) {
			serr = syscall.SetsockoptInt(int(fdn), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 8<<20)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.(*net.TCPConn).SetWriteBuffer(8 << 20); err != nil {
		t.Fatal(err)
	}
	server := <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	defer server.Close()

	b, err := f.OpenBlob(digestOf(content))
	if err != nil {
		t.Fatal(err)
	}
	n, err := b.WriteTo(conn.(*net.TCPConn))
	b.Close()
	if err != nil || n != int64(len(content)) {
		t.Fatalf("WriteTo = %d, %v", n, err)
	}
	conn.Close()
	// The artifact goes and others take its pages.
	fd.ok(t, EncodeDeleteArtifacts([]string{pathA}))
	for i := 0; i < 4; i++ {
		other := pattern(byte(10+i), len(content))
		fd.ok(t, storeCmds(t, fmt.Sprintf("u%d", 2+i), fmt.Sprintf("gitrepository/default/other%d/x.tar.gz", i), other, 256<<10)...)
	}
	got, err := io.ReadAll(server)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, content) {
		diff := 0
		for i := range min(len(got), len(content)) {
			if got[i] != content[i] {
				diff++
			}
		}
		t.Fatalf("received %d bytes, %d of them differ from the blob sent", len(got), diff)
	}
}
