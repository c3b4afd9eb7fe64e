// Package freeport finds loopback TCP addresses for test servers that
// must be told their address before they listen.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

var (
	mu sync.Mutex
	// given holds every port Addr returned in this process: two servers
	// of one test cluster told the same address fail (raft: "duplicate
	// address in configuration").
	given = map[int]bool{}
)

// lowestPort is the bottom of the range Addr draws from when the kernel's
// ephemeral range leaves room below it.
const lowestPort = 10000

// drawRange is the range [lo, hi] Addr draws ports from; ok is false where
// the kernel's ephemeral range leaves fewer than 1000 ports above
// lowestPort or cannot be read, and Addr lets the kernel choose.
func drawRange() (lo, hi int, ok bool) {
	lo, hi = lowestPort, ephemeralLow()-1
	return lo, hi, hi-lo >= 1000
}

// Addr returns a 127.0.0.1 address that was free a moment ago and that no
// earlier call in this process returned; it is closed again before Addr
// returns, so another process may still take it.
//
// The port lies below the kernel's ephemeral range where that leaves room:
// a test server restarted on its old address (a replica keeps its
// addresses across restarts) must not find it taken by the local end of
// some outgoing connection in the meantime, and the kernel picks those
// only from the ephemeral range.
func Addr() (string, error) {
	mu.Lock()
	defer mu.Unlock()
	lo, hi, ok := drawRange()
	for range 100 {
		port := 0
		if ok {
			port = lo + rand.IntN(hi-lo+1)
			if given[port] {
				continue
			}
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			if port != 0 {
				continue // in use: draw again
			}
			return "", fmt.Errorf("find a free port: %w", err)
		}
		addr := l.Addr().(*net.TCPAddr)
		l.Close()
		if !given[addr.Port] {
			given[addr.Port] = true
			return addr.String(), nil
		}
	}
	return "", fmt.Errorf("find a free port: 100 tries found none free that was not handed out before")
}

// ephemeralLow is the first port of the kernel's ephemeral range, or 0
// where it cannot be read; the setting is read once per process.
var ephemeralLow = sync.OnceValue(func() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0
	}
	low, err := strconv.Atoi(f[0])
	if err != nil {
		return 0
	}
	return low
})
