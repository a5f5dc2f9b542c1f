package conntrack

import (
	"net"
	"syscall"
)

// shutdown ends the socket at once: the peer is told now and blocked readers return. A
// plain Close would do it only at the last close(2), which Go delays until every goroutine
// blocked in I/O on the fd has been scheduled and has returned — under a mass eviction, with
// thousands of readers runnable, that wait dominated (issue 4's eviction-bulk).
func shutdown(c net.Conn) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) { syscall.Shutdown(int(fd), syscall.SHUT_RDWR) })
}
