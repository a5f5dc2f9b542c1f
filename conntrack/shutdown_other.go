//go:build !linux

package conntrack

import "net"

// shutdown is a no-op where it is not needed or not built: Close does the work.
func shutdown(net.Conn) {}
