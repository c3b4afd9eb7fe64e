package fsm

import (
	"bytes"
	"io"
	"net"
	"testing"
)

// TestWriteToTCPSendsFromTheFile streams a blob into a real TCP connection,
// whose ReadFrom copies from the database file with sendfile, twice: once
// verifying each chunk and once from the verified set.
func TestWriteToTCPSendsFromTheFile(t *testing.T) {
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
