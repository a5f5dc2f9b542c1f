package listener

import (
	"crypto/tls"
	"crypto/x509"

	"github.com/guardian-mtls/guardian/conntrack"
)

// SetAudiences replaces the audiences, as a configuration reload does: new handshakes use
// the new ones at once. A conn already served stays if an audience of its audience's name
// still exists and still trusts it (its client CA pool verifies the conn's chain, and it
// does not now require a certificate the conn lacks); otherwise it is closed with reason
// "policy". An invalid set changes nothing. It returns how many conns it closed.
func (l *Listener) SetAudiences(auds []Audience) (int, error) {
	l.reloadMu.Lock()
	defer l.reloadMu.Unlock()
	r, err := l.newRouter(auds, l.router.Load())
	if err != nil {
		return 0, err
	}
	l.router.Store(r)
	// A handshake that finishes from now on sees r after it is tracked (serveHandshake);
	// one tracked before is swept here.
	n := l.reg.EvictMatching(func(c *conntrack.Conn) (string, bool) {
		info, ok := c.Owner().(*ConnInfo)
		return "", ok && info.aud != nil && !l.stillTrusted(r, info)
	}, conntrack.Cause{Reason: conntrack.ReasonPolicy})
	return n, nil
}

// stillTrusted reports whether router r would serve the conn info describes.
func (l *Listener) stillTrusted(r *router, info *ConnInfo) bool {
	var a *audience
	for _, o := range r.auds {
		if o.Name == info.aud.Name {
			a = o
		}
	}
	switch {
	case a == nil:
		return false
	case a == info.aud:
		return true
	case a.Allow != nil:
		if _, ok := a.Allow.Admits(info.verified()); !ok {
			return false
		}
	}
	switch {
	case len(info.chains) == 0:
		return a.ClientAuth < tls.RequireAnyClientCert
	case a.ClientAuth < tls.VerifyClientCertIfGiven:
		return true
	}
	for _, ch := range info.chains {
		inter := x509.NewCertPool()
		for _, c := range ch[1:] {
			inter.AddCert(c)
		}
		_, err := ch[0].Verify(x509.VerifyOptions{Roots: a.ClientCAs, Intermediates: inter,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CurrentTime: l.clock.Now()})
		if err == nil {
			return true
		}
	}
	return false
}
