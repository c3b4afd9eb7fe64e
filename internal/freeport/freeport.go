// Package freeport finds loopback TCP addresses for test servers that
// must be told their address before they listen.
package freeport

import (
	"fmt"
	"net"
	"sync"
)

var (
	mu sync.Mutex
	// given holds every port Addr returned in this process: the kernel
	// may hand a closed port out again at once, and two servers of one
	// test cluster told the same address fail (raft: "duplicate address
	// in configuration").
	given = map[int]bool{}
)

// Addr returns a 127.0.0.1 address that was free a moment ago and that no
// earlier call in this process returned; it is closed again before Addr
// returns, so another process may still take it.
func Addr() (string, error) {
	mu.Lock()
	defer mu.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", fmt.Errorf("find a free port: %w", err)
		}
		addr := l.Addr().(*net.TCPAddr)
		l.Close()
		if !given[addr.Port] {
			given[addr.Port] = true
			return addr.String(), nil
		}
	}
	return "", fmt.Errorf("find a free port: 100 tries gave only ports handed out before")
}
