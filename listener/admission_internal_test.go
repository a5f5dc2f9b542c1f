package listener

import (
	"net"
	"testing"
)

// A per-client bound counts an IPv6 client by its /64, which one host can use all of.
func TestClientIPGroupsIPv6By64(t *testing.T) {
	for _, c := range []struct{ addr, want string }{
		{"127.0.0.1:1", "127.0.0.1"},
		{"[::ffff:10.0.0.1]:1", "10.0.0.1"},
		{"[2001:db8:1:2:aaaa::1]:443", "2001:db8:1:2::"},
		{"[2001:db8:1:2:ffff:ffff:ffff:ffff]:443", "2001:db8:1:2::"},
		{"[2001:db8:1:3::1]:443", "2001:db8:1:3::"},
	} {
		a, _ := net.ResolveTCPAddr("tcp", c.addr)
		if got := clientIP(a).String(); got != c.want {
			t.Errorf("clientIP(%s) = %s; want %s", c.addr, got, c.want)
		}
	}
}
