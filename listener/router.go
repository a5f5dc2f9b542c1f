package listener

import (
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/guardian-mtls/guardian/conntrack"
	"github.com/guardian-mtls/guardian/internal/clip"
)

type audience struct {
	Audience
	cfg *tls.Config

	// Own ticket keys, when the caller set none. crypto/tls falls back to the base config's
	// automatic keys for a GetConfigForClient config without explicit keys, which would
	// let a ticket from one audience resume on another; so each audience gets random keys,
	// rotated daily with a week of old ones kept for decryption, as crypto/tls does.
	ownKeys   bool
	keyMu     sync.Mutex
	keys      [][32]byte
	rotatedAt atomic.Int64
}

const (
	ticketKeyLifetime = 24 * time.Hour
	ticketKeysKept    = 7
)

func (a *audience) rotateTicketKeys(now time.Time) error {
	a.keyMu.Lock()
	defer a.keyMu.Unlock()
	if last := a.rotatedAt.Load(); last != 0 && now.Sub(time.Unix(0, last)) < ticketKeyLifetime {
		return nil
	}
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		return err
	}
	a.keys = append([][32]byte{k}, a.keys...)
	if len(a.keys) > ticketKeysKept {
		a.keys = a.keys[:ticketKeysKept]
	}
	a.cfg.SetSessionTicketKeys(a.keys)
	a.rotatedAt.Store(now.UnixNano())
	return nil
}

// router is one generation of audiences and the SNI tables that choose among them.
type router struct {
	auds  []*audience
	exact map[string]*audience
	wild  map[string]*audience // key: the name without its first label
	def   *audience
}

// newRouter builds a generation of audiences; nothing is changed when it fails. Audiences
// that keep their name from prev keep its session-ticket keys, so a reload does not cost
// clients their resumptions.
func (l *Listener) newRouter(auds []Audience, prev *router) (*router, error) {
	if len(auds) == 0 {
		return nil, errors.New("listener: no audiences")
	}
	r := &router{exact: map[string]*audience{}, wild: map[string]*audience{}}
	for i := range auds {
		var old *audience
		if prev != nil {
			for _, o := range prev.auds {
				if o.Name == auds[i].Name {
					old = o
				}
			}
		}
		if err := l.addAudience(r, &auds[i], old); err != nil {
			return nil, err
		}
	}
	return r, nil
}

func (l *Listener) addAudience(r *router, a *Audience, prev *audience) error {
	if a.Name == "" {
		return errors.New("listener: an audience has no name")
	}
	for _, o := range r.auds {
		if o.Name == a.Name {
			return fmt.Errorf("listener: audience %q defined twice", a.Name)
		}
	}
	if len(a.Certificates) == 0 && (a.TLS == nil || (len(a.TLS.Certificates) == 0 && a.TLS.GetCertificate == nil)) {
		return fmt.Errorf("listener: audience %q has no server certificate", a.Name)
	}
	if a.ClientAuth >= tls.VerifyClientCertIfGiven && a.ClientCAs == nil {
		return fmt.Errorf("listener: audience %q verifies client certificates but has no client CA pool", a.Name)
	}
	if a.Allow != nil && a.ClientAuth < tls.VerifyClientCertIfGiven {
		return fmt.Errorf("listener: audience %q has an allow policy but does not verify client certificates", a.Name)
	}
	if len(a.SNI) == 0 && !a.Default {
		return fmt.Errorf("listener: audience %q has no SNI names and is not the default", a.Name)
	}
	au := &audience{Audience: *a}
	r.auds = append(r.auds, au)
	for _, n := range a.SNI {
		name := strings.ToLower(strings.TrimSuffix(n, "."))
		if rest, ok := strings.CutPrefix(name, "*."); ok {
			if rest == "" || strings.Contains(rest, "*") {
				return fmt.Errorf("listener: audience %q: bad wildcard %q", a.Name, n)
			}
			if o := r.wild[rest]; o != nil {
				return fmt.Errorf("listener: SNI %q is in audiences %q and %q", n, o.Name, a.Name)
			}
			r.wild[rest] = au
			continue
		}
		if name == "" || strings.Contains(name, "*") {
			return fmt.Errorf("listener: audience %q: bad SNI name %q", a.Name, n)
		}
		if o := r.exact[name]; o != nil {
			return fmt.Errorf("listener: SNI %q is in audiences %q and %q", n, o.Name, a.Name)
		}
		r.exact[name] = au
	}
	if a.Default {
		if r.def != nil {
			return fmt.Errorf("listener: audiences %q and %q are both the default", r.def.Name, a.Name)
		}
		r.def = au
	}
	cfg := &tls.Config{}
	if a.TLS != nil {
		cfg = a.TLS.Clone()
	}
	if len(a.Certificates) > 0 {
		cfg.Certificates = a.Certificates
	}
	cfg.ClientAuth = a.ClientAuth
	cfg.ClientCAs = a.ClientCAs
	cfg.NextProtos = a.NextProtos
	if cfg.NextProtos == nil {
		cfg.NextProtos = []string{"h2", "http/1.1"}
	}
	if cfg.MinVersion == 0 {
		cfg.MinVersion = tls.VersionTLS12
	}
	cfg.Time = l.clock.Now
	au.cfg = cfg
	if len(a.SessionTicketKeys) > 0 {
		cfg.SetSessionTicketKeys(a.SessionTicketKeys)
	} else if !cfg.SessionTicketsDisabled {
		au.ownKeys = true
		if prev != nil && prev.ownKeys {
			prev.keyMu.Lock()
			au.keys = append([][32]byte(nil), prev.keys...)
			prev.keyMu.Unlock()
			au.rotatedAt.Store(prev.rotatedAt.Load())
			cfg.SetSessionTicketKeys(au.keys)
		} else if err := au.rotateTicketKeys(l.clock.Now()); err != nil {
			return fmt.Errorf("listener: audience %q: ticket keys: %w", a.Name, err)
		}
	}
	theirs := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if err := l.check(au, cs); err != nil {
			return err
		}
		if theirs != nil {
			return theirs(cs)
		}
		return nil
	}
	return nil
}

func (a *audience) isStale(listenerWide func() bool) bool {
	if a.Stale != nil {
		return a.Stale()
	}
	return listenerWide != nil && listenerWide()
}

// lookup finds the audience for an SNI name.
func (r *router) lookup(sni string) *audience {
	name := strings.ToLower(strings.TrimSuffix(sni, "."))
	if name == "" {
		return r.def
	}
	if a := r.exact[name]; a != nil {
		return a
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		return r.wild[name[i+1:]]
	}
	return nil
}

// validSNI reports whether a server name is made of DNS characters (letters, digits, '-',
// '_', '.') and is at most 253 bytes: anything else matches no audience, and so never
// reaches an upstream as the conn's SNI (a PROXY header's AUTHORITY, a log line).
func validSNI(name string) bool {
	if len(name) > 253 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i] | 0x20
		if !(c >= 'a' && c <= 'z' || name[i] >= '0' && name[i] <= '9' || name[i] == '-' || name[i] == '_' || name[i] == '.') {
			return false
		}
	}
	return true
}

// route is the base config's GetConfigForClient: it picks the audience and records it on
// the conn.
func (l *Listener) route(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	var a *audience
	if validSNI(hello.ServerName) {
		a = l.router.Load().lookup(hello.ServerName)
	}
	if a == nil {
		return nil, fmt.Errorf("%w %q", ErrUnknownSNI, clip.String(hello.ServerName, 64))
	}
	c, tracked := hello.Conn.(*conntrack.Conn)
	if tracked {
		c.Owner().(*ConnInfo).aud = a
	}
	if tracked {
		if err := l.adm.admit(c, c.Owner().(*ConnInfo), a); err != nil {
			return nil, err
		}
	}
	if a.ownKeys {
		if now := l.clock.Now(); now.UnixNano()-a.rotatedAt.Load() >= int64(ticketKeyLifetime) {
			if err := a.rotateTicketKeys(now); err != nil {
				return nil, err
			}
		}
	}
	return a.cfg, nil
}
