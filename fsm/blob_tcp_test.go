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

// TestSendfileSurvivesGC sends a blob file into a connection whose reader
// has not read yet, the way a download does (io.Copy from the *os.File
// into the TCP connection: sendfile), so the bytes wait in socket buffers
// or are still to be read from the file; then the artifact is deleted
// (its file unlinked) and other blobs are written. The reader must still
// receive the blob as it was: the open descriptor keeps the unlinked
// file's pages, and a blob file is never written again.
func TestSendfileSurvivesGC(t *testing.T) {
	f := newFSM(t)
	fd := &feeder{f: f}
	content := pattern(5, 4<<20+4321)
	fd.ok(t, storeCmds(t, "u1", pathA, content, 256<<10)...)

	small := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fdn uintptr) {
			serr = syscall.SetsockoptInt(int(fdn), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 64<<10)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	ln, err := small.Listen(context.Background(), "tcp", "127.0.0.1:0")
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
	server := <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	defer server.Close()

	c, err := f.Open(mustKey(t, pathA))
	if err != nil {
		t.Fatal(err)
	}
	// The consumer is slow: the sender blocks with most of the file unsent.
	sent := make(chan error, 1)
	go func() {
		n, err := io.Copy(conn.(*net.TCPConn), c.File)
		if err == nil && n != int64(len(content)) {
			err = fmt.Errorf("sent %d of %d bytes", n, len(content))
		}
		c.Close()
		conn.Close()
		sent <- err
	}()
	// The artifact goes (its file is unlinked) and others are written.
	fd.ok(t, EncodeDeleteArtifacts([]string{pathA}))
	if f.HasBlob(digestOf(content)) {
		t.Fatal("blob still recorded after its only artifact went")
	}
	if blobs, _ := files(t, f); blobs != 0 {
		t.Fatalf("%d blob files after the only artifact went", blobs)
	}
	for i := 0; i < 4; i++ {
		other := pattern(byte(10+i), len(content))
		fd.ok(t, storeCmds(t, fmt.Sprintf("u%d", 2+i), fmt.Sprintf("gitrepository/default/other%d/x.tar.gz", i), other, 256<<10)...)
	}
	got, err := io.ReadAll(server)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
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
