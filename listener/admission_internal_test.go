package listener

import (
	"net"
	"testing"

	"github.com/guardian-mtls/guardian/conntrack"
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

// A conn shed between its ClientHello and the admission (its OnClose already run) is not
// counted: a count taken then would never be given back.
func TestAdmitAfterCloseCountsNothing(t *testing.T) {
	adm := newAdmission(0)
	reg, err := conntrack.New(conntrack.Options{OnClose: func(c *conntrack.Conn) { adm.closed(c, c.Owner().(*ConnInfo)) }})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	a, b := net.Pipe()
	defer b.Close()
	info := &ConnInfo{}
	c := reg.Wrap(a, info)
	adm.accept()
	au := &audience{Audience: Audience{Name: "public", MaxConns: 1}}
	info.aud = au
	c.Close()
	if err := adm.admit(c, info, au); err == nil {
		t.Fatal("a closed conn was admitted")
	}
	if adm.open != 0 || len(adm.byAud) != 0 || len(adm.byClient) != 0 {
		t.Fatalf("after close: open %d, by audience %v, by client %v; want nothing counted", adm.open, adm.byAud, adm.byClient)
	}
}
