package listener

import (
	"container/list"
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/guardian-mtls/guardian/conntrack"
	"github.com/guardian-mtls/guardian/revoke"
)

// ConnInfo is what the listener knows of a conn: its identity, audience and verified
// client chains.
type ConnInfo struct {
	conn       *conntrack.Conn
	id         uint64
	aud        *audience
	chains     [][]*x509.Certificate
	serverName string

	adm  *list.Element // admission's, under its lock: see admittedMark
	idle atomic.Pointer[idleTimer]
}

// ID returns the conn's number, unique within its listener, for CloseConn.
func (i *ConnInfo) ID() uint64 { return i.id }

// Audience returns the name of the audience that served the conn.
func (i *ConnInfo) Audience() string {
	if i.aud == nil {
		return ""
	}
	return i.aud.Name
}

// ServerName returns the SNI the client sent.
func (i *ConnInfo) ServerName() string { return i.serverName }

// RemoteAddr returns the client's address.
func (i *ConnInfo) RemoteAddr() net.Addr { return i.conn.RemoteAddr() }

// Since returns when the conn's handshake finished and it was tracked.
func (i *ConnInfo) Since() time.Time { return i.conn.Since() }

// Chains returns the client's verified chains (or its unverified certificates, for an
// audience that does not verify them); nil without a client certificate.
func (i *ConnInfo) Chains() [][]*x509.Certificate { return i.chains }

// Leaf returns the client certificate, or nil.
func (i *ConnInfo) Leaf() *x509.Certificate {
	if len(i.chains) == 0 || len(i.chains[0]) == 0 {
		return nil
	}
	return i.chains[0][0]
}

// AllowedBy returns the pattern of its audience's Allow policy that admits the conn, or ""
// when the audience has no policy.
func (i *ConnInfo) AllowedBy() string {
	if i.aud == nil || i.aud.Allow == nil {
		return ""
	}
	p, _ := i.aud.Allow.Admits(i.verified())
	return p
}

// verified returns the chains if they were verified: an audience that asks for a
// certificate without verifying it keeps the presented one, which no policy may admit.
func (i *ConnInfo) verified() [][]*x509.Certificate {
	if i.aud == nil || i.aud.ClientAuth < tls.VerifyClientCertIfGiven {
		return nil
	}
	return i.chains
}

// Keys returns every revocation key that would close this conn.
func (i *ConnInfo) Keys() []revoke.Key { return revoke.KeysOfChains(i.chains) }

// Eviction is a conn the listener closed, for Config.OnEvict.
type Eviction struct {
	Conn *ConnInfo
	// Reason is revoked, expired, policy (a reload no longer trusts it), shutdown or manual
	// (CloseConn): the conntrack.Reason… constants.
	Reason string
	// Key is the revocation key that hit the conn; "" but for revoked.
	Key revoke.Key
	// Age is how long the conn had been served.
	Age time.Duration
	// Latency runs from the event (a revocation's arrival, say) to the raw conn's close.
	Latency time.Duration
}

// Conns calls fn with the ConnInfo of each live conn the listener served, until fn returns
// false; fn runs without the listener's locks held.
func (l *Listener) Conns(fn func(*ConnInfo) bool) {
	l.reg.Range(func(c *conntrack.Conn) bool {
		info, ok := c.Owner().(*ConnInfo)
		return !ok || fn(info)
	})
}

// ClientCerts returns, for ocsp.Checker.Run, a function that yields the client certificate
// and its issuer of each live conn whose audience in accepts (nil: every audience). A conn
// without a certificate, or whose chain holds no issuer, is skipped.
func (l *Listener) ClientCerts(in func(audience string) bool) func(yield func(leaf, issuer *x509.Certificate)) {
	return func(yield func(leaf, issuer *x509.Certificate)) {
		l.Conns(func(info *ConnInfo) bool {
			if in == nil || in(info.Audience()) {
				if ch := info.chains; len(ch) > 0 && len(ch[0]) > 1 {
					yield(ch[0][0], ch[0][1])
				}
			}
			return true
		})
	}
}

// CloseConn closes the live conn with this ID without revoking its certificate (a client
// holding a stale session, say), as an eviction with reason manual. It reports whether
// such a conn was live. The close itself happens on an eviction worker, at once.
func (l *Listener) CloseConn(id uint64) bool {
	found := false
	l.reg.Range(func(c *conntrack.Conn) bool {
		if info, ok := c.Owner().(*ConnInfo); ok && info.id == id {
			found = l.reg.EvictConn(c, conntrack.Cause{Reason: conntrack.ReasonManual})
			return false
		}
		return true
	})
	return found
}

func (l *Listener) onEvict(e conntrack.Eviction) {
	info, ok := e.Conn.Owner().(*ConnInfo)
	if !ok {
		return
	}
	age := time.Duration(0)
	if since := e.Conn.Since(); !since.IsZero() {
		age = l.clock.Now().Sub(since)
	}
	if l.onEv != nil {
		l.onEv(Eviction{Conn: info, Reason: e.Reason, Key: revoke.Key(e.Key), Age: age, Latency: e.Latency})
	}
	if l.log.Enabled(context.Background(), slog.LevelInfo) {
		l.log.Info("conn evicted", "key", e.Key, "reason", e.Reason, "audience", info.Audience(),
			"conn", info.id, "remote", e.Conn.RemoteAddr().String(), "age", age.Round(time.Millisecond),
			"latency", e.Latency)
	}
}

// onClose uncounts a conn, stops its idle timer, and ends enforcement after the last conn
// of a closed listener.
func (l *Listener) onClose(c *conntrack.Conn) {
	if info, ok := c.Owner().(*ConnInfo); ok {
		l.adm.closed(c, info)
		info.idle.Load().stop()
	}
	l.maybeEnd()
}

type ctxKey struct{}

// ConnContext is for http.Server.ConnContext: it puts the conn's ConnInfo in the context
// of every request on it, for FromContext.
func (l *Listener) ConnContext(ctx context.Context, c net.Conn) context.Context {
	if info, ok := FromConn(c); ok {
		return context.WithValue(ctx, ctxKey{}, info)
	}
	return ctx
}

// FromContext returns the ConnInfo that ConnContext stored.
func FromContext(ctx context.Context) (*ConnInfo, bool) {
	info, ok := ctx.Value(ctxKey{}).(*ConnInfo)
	return info, ok
}

// FromConn returns the ConnInfo of a conn that a Listener accepted: the *tls.Conn that
// Accept returned, or its NetConn.
func FromConn(c net.Conn) (*ConnInfo, bool) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	raw, ok := c.(*conntrack.Conn)
	if !ok {
		return nil, false
	}
	info, ok := raw.Owner().(*ConnInfo)
	return info, ok
}
