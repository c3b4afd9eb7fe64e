package freeport

import (
	"net"
	"strconv"
	"testing"
)

// TestAddrBelowEphemeralRange: every address is distinct, listenable and,
// where the kernel's range leaves room, below it, where no outgoing
// connection can take it while its server is down.
func TestAddrBelowEphemeralRange(t *testing.T) {
	lo, hi, ok := drawRange()
	seen := map[string]bool{}
	for range 200 {
		a, err := Addr()
		if err != nil {
			t.Fatal(err)
		}
		if seen[a] {
			t.Fatalf("%s handed out twice", a)
		}
		seen[a] = true
		_, p, err := net.SplitHostPort(a)
		if err != nil {
			t.Fatal(err)
		}
		port, _ := strconv.Atoi(p)
		if ok && (port < lo || port > hi) {
			t.Fatalf("%s outside [%d, %d], below the ephemeral range", a, lo, hi)
		}
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatalf("listen on %s: %v", a, err)
		}
		l.Close()
	}
}
