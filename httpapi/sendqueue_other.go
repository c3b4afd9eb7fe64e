//go:build !linux

package httpapi

import "syscall"

// unacked is unknown here: progress is what writes return.
func unacked(syscall.RawConn) (int, bool) { return 0, false }
