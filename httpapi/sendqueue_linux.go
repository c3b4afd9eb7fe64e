package httpapi

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// unacked is how many bytes written to conn its peer has not acknowledged
// yet (SIOCOUTQ). A client that reads frees its receive window and lets
// these be acknowledged, so a shrinking queue is progress even while
// writes stay blocked: Linux wakes a blocked writer only once a third or
// more of a possibly multi-megabyte send buffer drained.
func unacked(rc syscall.RawConn) (int, bool) {
	if rc == nil {
		return 0, false
	}
	var (
		n    int
		ierr error
	)
	if err := rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) }); err != nil || ierr != nil {
		return 0, false
	}
	return n, true
}
