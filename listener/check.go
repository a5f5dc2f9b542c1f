package listener

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/guardian-mtls/guardian/conntrack"
	"github.com/guardian-mtls/guardian/revoke"
)

// chainsOf returns the verified chains, or the presented certificates when the audience
// asks for a certificate without verifying it: those can still be denied by key.
func chainsOf(cs *tls.ConnectionState) [][]*x509.Certificate {
	if len(cs.VerifiedChains) > 0 {
		return cs.VerifiedChains
	}
	if len(cs.PeerCertificates) > 0 {
		return [][]*x509.Certificate{cs.PeerCertificates}
	}
	return nil
}

// check is the revocation check, run by crypto/tls on full and resumed handshakes alike
// (VerifyPeerCertificate is skipped on resumption), so that a revoked client is refused
// with an alert. serveHandshake derives the keys again to track the conn: crypto/tls
// gives VerifyConnection no handle on the conn to leave them on, and deriving them costs
// a few microseconds against the handshake's milliseconds (BENCHMARKS.md, keys).
//
// Staleness is decided here too, not at the ClientHello: OnVerified may just have learned the
// intermediate a held CRL waits for, and applied it — an audience closed while that CRL was
// missing would otherwise never see the chain that ends its staleness.
func (l *Listener) check(a *audience, cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) > l.maxChain {
		return fmt.Errorf("%w: %d certificates, more than %d", errChainTooLong, len(cs.PeerCertificates), l.maxChain)
	}
	if l.onVer != nil && len(cs.VerifiedChains) > 0 {
		if err := l.onVer(a.Name, cs.VerifiedChains); err != nil {
			return err
		}
	}
	if a.OnStale == StaleClosed && a.isStale(l.stale) {
		return ErrStale
	}
	if a.Allow != nil {
		if _, ok := a.Allow.Admits(cs.VerifiedChains); !ok {
			return ErrNotAllowed
		}
	}
	chains := chainsOf(&cs)
	if len(chains) == 0 {
		return nil
	}
	keys := revoke.KeysOfChains(chains)
	if e, ok := l.set.AnyOf(keys); ok {
		return fmt.Errorf("%w: %s", ErrRevoked, e.Key)
	}
	return nil
}

// expiry is when the conn stops being valid: the latest, over its verified chains, of
// each chain's earliest NotAfter.
func expiry(chains [][]*x509.Certificate) time.Time {
	var best time.Time
	for _, ch := range chains {
		var first time.Time
		for _, c := range ch {
			if first.IsZero() || c.NotAfter.Before(first) {
				first = c.NotAfter
			}
		}
		if first.After(best) {
			best = first
		}
	}
	return best
}

func confirm(c *conntrack.Conn, key string) bool {
	info, ok := c.Owner().(*ConnInfo)
	return ok && revoke.Matches(info.chains, revoke.Key(key))
}

func (l *Listener) onChange(ch revoke.Change) {
	if len(ch.Added) == 0 && !ch.Sweep {
		return
	}
	cause := conntrack.Cause{Reason: conntrack.ReasonRevoked, Since: time.Now()}
	n := 0
	if len(ch.Added) > 0 {
		keys := make([]string, len(ch.Added))
		for i, e := range ch.Added {
			keys[i] = string(e.Key)
		}
		n = l.reg.Evict(keys, cause)
	}
	if ch.Sweep {
		n += l.sweep(cause)
	}
	if l.onRev != nil {
		l.onRev(ch, n)
	}
}

// sweep re-checks the serial and keyserial keys of every live conn against the Set: a change
// revoked more serials (a CRL's first load) than it could list. A CRL's list answers
// keyserial keys only, which need each certificate's issuer from the chain; the Sweeper
// derives them and caches the issuers' hashes.
func (l *Listener) sweep(cause conntrack.Cause) int {
	sw := l.set.Sweeper()
	return l.reg.EvictMatching(func(c *conntrack.Conn) (string, bool) {
		info, ok := c.Owner().(*ConnInfo)
		if !ok {
			return "", false
		}
		k, ok := sw.Revoked(info.chains)
		return string(k), ok
	}, cause)
}
