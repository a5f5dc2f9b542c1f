package listener

import (
	"container/list"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/guardian-mtls/guardian/conntrack"
)

// Refusals of the conn bounds, checked with errors.Is.
var (
	errAudienceFull = errors.New("listener: the audience is at its max_conns")
	errClientFull   = errors.New("listener: this client address is at the audience's max_conns_per_client")
	errReserved     = errors.New("listener: near max_conns, the rest is kept for clients with certificates")
)

// reserveShare is the part of Config.MaxConns that audiences without required client
// certificates cannot take at their ClientHello: it stays for mTLS clients.
const reserveShare = 10 // percent

// admission counts conns for Config.MaxConns and each audience's MaxConns and
// MaxConnsPerClient, and keeps the served conns without a client certificate in age order:
// at MaxConns the oldest of them is the first shed.
type admission struct {
	max int

	mu       sync.Mutex
	open     int // accepted and not yet closed
	byAud    map[string]int
	byClient map[clientKey]int
	anon     list.List // *conntrack.Conn served without a client certificate, oldest first
}

type clientKey struct {
	aud string
	ip  netip.Addr
}

// admittedMark is ConnInfo.adm for a conn counted at its ClientHello and not in the
// shedding order; nil means not counted, any other element its place in that order. One
// field for both keeps ConnInfo in a smaller size class (BENCHMARKS.md, memory).
var admittedMark = new(list.Element)

func newAdmission(max int) *admission {
	return &admission{max: max, byAud: map[string]int{}, byClient: map[clientKey]int{}}
}

// accept counts a new conn. At Config.MaxConns it makes room: it returns the oldest served
// conn without a client certificate, for the caller to close, or, when there is none,
// full: the caller sheds a handshake or refuses the new conn.
func (a *admission) accept() (victim *conntrack.Conn, full bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.max > 0 && a.open >= a.max {
		if e := a.anon.Front(); e != nil {
			victim = a.anon.Remove(e).(*conntrack.Conn)
			victim.Owner().(*ConnInfo).adm = admittedMark
		} else {
			full = true
		}
	}
	a.open++
	return victim, full
}

// admit counts c into audience au at its ClientHello, or says which bound refuses it.
func (a *admission) admit(c *conntrack.Conn, info *ConnInfo, au *audience) error {
	ip := clientIP(c.RemoteAddr())
	a.mu.Lock()
	defer a.mu.Unlock()
	if c.Closed() {
		// Shed or closed since its ClientHello was read: its OnClose has run or is waiting
		// for this lock, and must find nothing counted.
		return net.ErrClosed
	}
	if info.adm != nil {
		return nil // counted already
	}
	k := clientKey{au.Name, ip}
	switch {
	case au.MaxConns > 0 && a.byAud[au.Name] >= au.MaxConns:
		return errAudienceFull
	case au.MaxConnsPerClient > 0 && a.byClient[k] >= au.MaxConnsPerClient:
		return errClientFull
	case a.max > 0 && !requiresCert(au.ClientAuth) && a.open > a.max*(100-reserveShare)/100:
		return errReserved
	}
	a.byAud[au.Name]++
	a.byClient[k]++
	info.adm = admittedMark
	return nil
}

// requiresCert reports whether every conn of an audience with this ClientAuth holds a
// certificate (VerifyClientCertIfGiven, "optional", does not).
func requiresCert(ca tls.ClientAuthType) bool {
	return ca == tls.RequireAnyClientCert || ca == tls.RequireAndVerifyClientCert
}

// served records a conn that finished its handshake; one without a client certificate
// joins the shedding order.
func (a *admission) served(c *conntrack.Conn, info *ConnInfo) {
	if len(info.chains) > 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !c.Closed() && info.adm == admittedMark { // else onClose ran, or will find nothing to remove
		info.adm = a.anon.PushBack(c)
	}
}

// closed uncounts a conn, once, when it closes.
func (a *admission) closed(c *conntrack.Conn, info *ConnInfo) {
	ip := clientIP(c.RemoteAddr())
	a.mu.Lock()
	defer a.mu.Unlock()
	a.open--
	if info.adm == nil {
		return
	}
	if info.adm != admittedMark {
		a.anon.Remove(info.adm)
	}
	info.adm = nil
	name := info.aud.Name // set by route just before admit counted it, and not after
	k := clientKey{name, ip}
	if a.byAud[name]--; a.byAud[name] <= 0 {
		delete(a.byAud, name)
	}
	if a.byClient[k]--; a.byClient[k] <= 0 {
		delete(a.byClient, k)
	}
}

// clientIP is the address a per-client bound counts by: an IPv4 address, or the /64 of an
// IPv6 one (a host is given a /64 and can use every address in it).
func clientIP(addr net.Addr) netip.Addr {
	var ip netip.Addr
	if ta, ok := addr.(*net.TCPAddr); ok {
		ip = ta.AddrPort().Addr().Unmap()
	} else if ap, err := netip.ParseAddrPort(addr.String()); err == nil {
		ip = ap.Addr().Unmap()
	} else {
		return netip.Addr{}
	}
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

// ConnState is for http.Server.ConnState: it closes a conn that has had no request in
// flight for its audience's IdleTimeout — from its start, so an HTTP/2 conn that never
// sends a request is closed too — and is what makes IdleTimeout work.
func (l *Listener) ConnState(nc net.Conn, s http.ConnState) {
	tc, ok := nc.(*tls.Conn)
	if !ok {
		return
	}
	raw, ok := tc.NetConn().(*conntrack.Conn)
	if !ok {
		return
	}
	info, ok := raw.Owner().(*ConnInfo)
	if !ok || info.aud == nil {
		return
	}
	if lt := info.aud.MaxConnLifetime; lt > 0 && s == http.StateIdle && l.clock.Now().Sub(raw.Since()) >= lt &&
		tc.ConnectionState().NegotiatedProtocol != "h2" {
		// Past its lifetime, and between HTTP/1.1 requests (the last response is written):
		// it ends here, gracefully. An HTTP/2 conn goes idle while its last response may
		// still be queued; it ends with the GOAWAY that response's Connection: close sends,
		// or at the cut.
		l.reg.EvictConn(raw, conntrack.Cause{Reason: conntrack.ReasonLifetime})
		return
	}
	if info.aud.IdleTimeout <= 0 {
		return
	}
	if s == http.StateIdle && tc.ConnectionState().NegotiatedProtocol != "h2" {
		// Progress left deadlines for the server's writes and reads after an HTTP/1.1
		// handler returned; they must not reach into the next request.
		raw.SetDeadline(time.Time{})
	}
	it := info.timers()
	it.mu.Lock()
	defer it.mu.Unlock()
	switch s {
	case http.StateNew, http.StateIdle:
		if it.t == nil {
			aud := info.aud.Name
			it.t = time.AfterFunc(info.aud.IdleTimeout, func() {
				if !raw.Closed() {
					l.m.idleClosed.WithLabelValues(aud).Inc()
					raw.Close()
				}
			})
		} else {
			it.t.Reset(info.aud.IdleTimeout)
		}
	default: // active, hijacked, closed
		if it.t != nil {
			it.t.Stop()
		}
	}
}

// idleTimer is a conn's idle timer, made at its first ConnState.
type idleTimer struct {
	mu   sync.Mutex
	t    *time.Timer
	life *time.Timer // MaxConnLifetime's cut, if the audience has one
}

// timers returns the conn's timers, made at first use.
func (info *ConnInfo) timers() *idleTimer {
	it := info.idle.Load()
	if it == nil {
		it = &idleTimer{}
		if !info.idle.CompareAndSwap(nil, it) {
			it = info.idle.Load()
		}
	}
	return it
}

func (it *idleTimer) stop() {
	if it == nil {
		return
	}
	it.mu.Lock()
	if it.t != nil {
		it.t.Stop()
	}
	if it.life != nil {
		it.life.Stop()
	}
	it.mu.Unlock()
}
