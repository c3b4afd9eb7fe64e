// Package freeport finds loopback TCP addresses for test servers that
// must be told their address before they listen.
package freeport

import (
	"fmt"
	"net"
)

// Addr returns a 127.0.0.1 address that was free a moment ago; it is
// closed again before Addr returns, so another process may still take it.
func Addr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}
