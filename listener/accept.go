package listener

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/guardian-mtls/guardian/conntrack"
	"github.com/guardian-mtls/guardian/revoke"
)

// Accept returns the next conn whose handshake succeeded and which is tracked, a
// *tls.Conn. It returns an error only once the listener is closed or the wrapped listener
// fails for good.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		l.hsMu.Lock()
		if e := l.queue.Front(); e != nil {
			l.queue.Remove(e)
			more := l.queue.Len() > 0
			l.hsMu.Unlock()
			if more {
				l.signalQueued() // for another caller of Accept
			}
			return e.Value.(*tls.Conn), nil
		}
		l.hsMu.Unlock()
		select {
		case <-l.queued:
		case <-l.done:
			return nil, l.acceptErr
		}
	}
}

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	var delay time.Duration
	for {
		nc, err := l.inner.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				l.shut(err)
				return
			}
			// As net/http does: a resource error (EMFILE, ECONNABORTED) is waited out,
			// never returned, so that one bad moment does not stop the server.
			l.m.acceptErrors.Inc()
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.log.Warn("accept failed; retrying", "err", err, "delay", delay)
			select {
			case <-time.After(delay):
			case <-l.done:
				return
			}
			continue
		}
		delay = 0
		info := &ConnInfo{id: l.nextID.Add(1)}
		c := l.reg.Wrap(nc, info)
		info.conn = c
		victim, full := l.adm.accept()
		if victim != nil {
			l.m.shed.WithLabelValues("anonymous").Inc()
			victim.Close()
		}
		l.hsMu.Lock()
		select {
		case <-l.done:
			l.hsMu.Unlock()
			c.Close()
			return
		default:
		}
		var shed net.Conn
		pending := len(l.handshakes) + l.queue.Len()
		switch {
		case len(l.handshakes) > 0 && (pending >= l.maxHS || full):
			e := l.hsOrder.Front()
			hs := e.Value.(*conntrack.Conn)
			l.hsOrder.Remove(e)
			delete(l.handshakes, hs)
			shed = hs
		case pending >= l.maxHS:
			// Every slot is held by a conn the server has not taken: the oldest goes, as
			// a full kernel backlog drops a connection.
			shed = l.queue.Remove(l.queue.Front()).(*tls.Conn).NetConn()
			l.m.shed.WithLabelValues("unaccepted").Inc()
		case full:
			// MaxConns, and every conn is served with a certificate: the new one waits
			// for none of them.
			l.hsMu.Unlock()
			l.m.shed.WithLabelValues("refused").Inc()
			c.Close()
			continue
		}
		l.handshakes[c] = l.hsOrder.PushBack(c)
		l.wg.Add(1)
		l.hsMu.Unlock()
		if shed != nil {
			shed.Close() // a handshake then fails and is counted as "shed"
		}
		go l.serveHandshake(c, info)
	}
}

// endHandshake unregisters c's handshake; shed reports that the accept loop had already
// dropped it to admit a newer conn.
func (l *Listener) endHandshake(c *conntrack.Conn) (shed bool) {
	l.hsMu.Lock()
	defer l.hsMu.Unlock()
	e, ok := l.handshakes[c]
	if ok {
		delete(l.handshakes, c)
		l.hsOrder.Remove(e)
	}
	return !ok
}

func (l *Listener) serveHandshake(c *conntrack.Conn, info *ConnInfo) {
	defer l.wg.Done()
	tc := tls.Server(c, l.base)
	c.SetDeadline(time.Now().Add(l.timeout))
	err := tc.Handshake()
	if l.endHandshake(c) && err != nil {
		err = errShed
	}
	if err != nil {
		l.refuse(c, info, err)
		return
	}
	c.SetDeadline(time.Time{})
	cs := tc.ConnectionState()
	info.chains = chainsOf(&cs)
	info.serverName = cs.ServerName
	keys := revoke.KeysOfChains(info.chains)
	strs := make([]string, len(keys))
	for i, k := range keys {
		strs[i] = string(k)
	}
	var notAfter time.Time
	if !l.keepExp {
		notAfter = expiry(info.chains)
	}
	if err := l.reg.Track(c, strs, notAfter); err != nil {
		return // closed during the handshake's last moments
	}
	// Track inserted first; a revocation applied before the insert was missed by its
	// Evict but is in the Set now. Likewise a reload's sweep, for the audiences.
	if e, ok := l.set.AnyOf(keys); ok {
		l.refuse(c, info, fmt.Errorf("%w: %s (revoked during the handshake)", ErrRevoked, e.Key))
		return
	}
	if !l.stillTrusted(l.router.Load(), info) {
		l.refuse(c, info, errPolicy)
		return
	}
	if !notAfter.IsZero() && l.clock.Now().After(notAfter) {
		l.refuse(c, info, errors.New("listener: certificate expired during the handshake"))
		return
	}
	l.adm.served(c, info)
	if lt := info.aud.MaxConnLifetime; lt > 0 {
		it := info.timers()
		it.mu.Lock()
		it.life = time.AfterFunc(lt+info.aud.LifetimeGrace, func() {
			l.reg.EvictConn(c, conntrack.Cause{Reason: conntrack.ReasonLifetime})
		})
		it.mu.Unlock()
	}
	result := "full"
	if cs.DidResume {
		result = "resumed"
	}
	l.m.handshakes.WithLabelValues(info.aud.Name, result).Inc()
	l.hsMu.Lock()
	select {
	case <-l.done:
		l.hsMu.Unlock()
		c.Close()
		return
	default:
	}
	l.queue.PushBack(tc)
	l.hsMu.Unlock()
	l.signalQueued()
}

func (l *Listener) signalQueued() {
	select {
	case l.queued <- struct{}{}:
	default:
	}
}

func (l *Listener) refuse(c *conntrack.Conn, info *ConnInfo, err error) {
	reason := classify(err)
	aud := ""
	if info.aud != nil {
		aud = info.aud.Name
	}
	l.m.failures.WithLabelValues(reason).Inc()
	c.Close()
	// At Info, so that a client refused for no certificate or the wrong CA leaves a trace;
	// rate-limited per reason (refusedLog), as any client can cause them.
	l.refusedLog.Info("handshake refused: "+reason, "reason", reason, "audience", aud, "remote", c.RemoteAddr().String(), "err", err)
}

func classify(err error) string {
	if r := proxyHeaderReason(err); r != "" {
		return r
	}
	var refusal *RefusalError
	if errors.As(err, &refusal) {
		return refusal.Reason
	}
	var rh tls.RecordHeaderError
	switch {
	case errors.Is(err, ErrRevoked):
		return "revoked"
	case errors.Is(err, ErrUnknownSNI):
		return "unknown_sni"
	case errors.Is(err, ErrStale):
		return "stale"
	case errors.Is(err, errPolicy):
		return "policy"
	case errors.Is(err, ErrNotAllowed):
		return "not_allowed"
	case errors.Is(err, errShed):
		return "shed"
	case errors.Is(err, errChainTooLong):
		return "chain_too_long"
	case errors.Is(err, errAudienceFull):
		return "audience_full"
	case errors.Is(err, errClientFull):
		return "client_full"
	case errors.Is(err, errReserved):
		return "reserved"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.As(err, &rh):
		return "not_tls"
	case errors.Is(err, net.ErrClosed):
		return "closed"
	}
	var ce *tls.CertificateVerificationError
	if errors.As(err, &ce) || strings.Contains(err.Error(), "certificate") {
		return "bad_certificate"
	}
	return "tls_error"
}
