package idleserver

import "net"

// Serve accepts from l until Accept fails, holding each conn in a reader goroutine until the
// conn ends; then it closes the conn.
func Serve(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			buf := make([]byte, 64)
			for {
				if _, err := c.Read(buf); err != nil {
					c.Close()
					return
				}
			}
		}()
	}
}
