//go:build !linux

package httpapi

import "net"

// unacked is unknown here: progress is what writes return.
func unacked(net.Conn) (int, bool) { return 0, false }
