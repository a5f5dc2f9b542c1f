package ocsp_test

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	xocsp "golang.org/x/crypto/ocsp"

	"github.com/guardian-mtls/guardian/internal/metrictest"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/ocsp"
)

// responder is a real HTTP OCSP responder whose answers a test sets.
type responder struct {
	t       *testing.T
	ca      *pkitest.CA
	srv     *httptest.Server
	mu      sync.Mutex
	answer  func(req *xocsp.Request) []byte // nil: good, signed by the CA
	delay   time.Duration
	status  int
	revoked map[string]bool
	hits    atomic.Int32
}

func newResponder(t *testing.T, ca *pkitest.CA) *responder {
	r := &responder{t: t, ca: ca, revoked: map[string]bool{}, status: 200}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *responder) serve(w http.ResponseWriter, hr *http.Request) {
	r.hits.Add(1)
	body, _ := io.ReadAll(hr.Body)
	req, err := xocsp.ParseRequest(body)
	if err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	r.mu.Lock()
	answer, delay, status, revoked := r.answer, r.delay, r.status, r.revoked[req.SerialNumber.String()]
	r.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-hr.Context().Done():
			return
		}
	}
	if status != 200 {
		w.WriteHeader(status)
		return
	}
	if answer != nil {
		w.Write(answer(req))
		return
	}
	tmpl := xocsp.Response{Status: xocsp.Good, SerialNumber: req.SerialNumber, ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(time.Hour)}
	if revoked {
		tmpl.Status, tmpl.RevokedAt, tmpl.RevocationReason = xocsp.Revoked, time.Now().Add(-time.Minute).Truncate(time.Second), xocsp.KeyCompromise
	}
	der, err := xocsp.CreateResponse(r.ca.Cert, r.ca.Cert, tmpl, r.ca.Key)
	if err != nil {
		r.t.Error(err)
	}
	w.Write(der)
}

func (r *responder) set(f func(r *responder)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(r)
}

func newChecker(t *testing.T, set *revoke.Set, url string, reg prometheus.Registerer, tweak ...func(*ocsp.Options)) *ocsp.Checker {
	t.Helper()
	o := ocsp.Options{Set: set, Responder: url, Timeout: 500 * time.Millisecond, Metrics: reg}
	for _, f := range tweak {
		f(&o)
	}
	c, err := ocsp.New(o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newSet(t *testing.T) *revoke.Set {
	s, err := revoke.NewSet(revoke.SetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestGoodIsCachedAndShared(t *testing.T) {
	ca := pkitest.NewCA(t)
	leaf := ca.MustIssue(t, pkitest.Opts{CommonName: "a"})
	r := newResponder(t, ca)
	r.set(func(r *responder) { r.delay = 100 * time.Millisecond })
	c := newChecker(t, newSet(t), r.srv.URL, nil)
	var wg sync.WaitGroup
	var good atomic.Int32
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if res := c.Check(context.Background(), leaf.Cert, ca.Cert); res.Status == ocsp.Good {
				good.Add(1)
			}
		}()
	}
	wg.Wait()
	if good.Load() != 20 || r.hits.Load() != 1 {
		t.Fatalf("%d of 20 concurrent checks good, with %d requests; want 20 and 1", good.Load(), r.hits.Load())
	}
	if res := c.Check(context.Background(), leaf.Cert, ca.Cert); res.Status != ocsp.Good || r.hits.Load() != 1 {
		t.Fatalf("cached check: %v with %d requests; want good from the cache", res.Status, r.hits.Load())
	}
}

func TestRevokedBecomesASetEntry(t *testing.T) {
	ca := pkitest.NewCA(t)
	leaf := ca.MustIssue(t, pkitest.Opts{CommonName: "a"})
	r := newResponder(t, ca)
	r.set(func(r *responder) { r.revoked[leaf.Cert.SerialNumber.String()] = true })
	set := newSet(t)
	res := newChecker(t, set, r.srv.URL, nil).Check(context.Background(), leaf.Cert, ca.Cert)
	if res.Status != ocsp.Revoked || res.Reason != "keyCompromise" {
		t.Fatalf("status %v reason %q; want revoked for keyCompromise", res.Status, res.Reason)
	}
	e, ok := set.Lookup(revoke.KeySerialKey(ca.Cert.RawSubject, ca.Cert.RawSubjectPublicKeyInfo, leaf.Cert.SerialNumber))
	if !ok || e.Source != revoke.SourceOCSP || !e.Expires.Equal(leaf.Cert.NotAfter) {
		t.Fatalf("Set entry %+v, %v; want an ocsp entry that expires with the certificate", e, ok)
	}
}

// Every bad answer is refused with a reason, counted, and never mistaken for good.
func TestBadResponsesAreRefused(t *testing.T) {
	ca := pkitest.NewCA(t)
	other, _ := pkitest.New("another CA")
	leaf := ca.MustIssue(t, pkitest.Opts{CommonName: "a"})
	noEKU := ca.MustIssue(t, pkitest.Opts{CommonName: "not a responder"})
	good := func(issuerForID *x509.Certificate, responder *x509.Certificate, key crypto.Signer, serial *big.Int, next time.Time) []byte {
		tmpl := xocsp.Response{Status: xocsp.Good, SerialNumber: serial, ThisUpdate: time.Now().Add(-time.Hour), NextUpdate: next}
		if responder != ca.Cert {
			tmpl.Certificate = responder // a delegated responder sends its certificate
		}
		der, err := xocsp.CreateResponse(issuerForID, responder, tmpl, key)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	hour := time.Now().Add(time.Hour)
	delegate := ca.MustIssue(t, pkitest.Opts{CommonName: "ocsp responder", EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning}})
	r := newResponder(t, ca)
	r.set(func(r *responder) {
		r.answer = func(*xocsp.Request) []byte {
			return good(ca.Cert, delegate.Cert, delegate.Key, leaf.Cert.SerialNumber, hour)
		}
	})
	if res := newChecker(t, newSet(t), r.srv.URL, nil).Check(context.Background(), leaf.Cert, ca.Cert); res.Status != ocsp.Good {
		t.Fatalf("a delegated responder with the OCSP-signing EKU: %v %v; want good", res.Status, res.Err)
	}
	// An intermediate that answers itself and sends its own certificate, as openssl ocsp
	// -rsigner CA.pem does.
	inter := ca.MustIntermediate(t, "devices CA")
	ileaf := inter.MustIssue(t, pkitest.Opts{CommonName: "device"})
	r2 := newResponder(t, inter)
	r2.set(func(r *responder) {
		r.answer = func(*xocsp.Request) []byte {
			der, err := xocsp.CreateResponse(inter.Cert, inter.Cert, xocsp.Response{Status: xocsp.Good, SerialNumber: ileaf.Cert.SerialNumber,
				ThisUpdate: time.Now().Add(-time.Hour), NextUpdate: hour, Certificate: inter.Cert}, inter.Key)
			if err != nil {
				t.Error(err)
			}
			return der
		}
	})
	if res := newChecker(t, newSet(t), r2.srv.URL, nil).Check(context.Background(), ileaf.Cert, inter.Cert); res.Status != ocsp.Good {
		t.Fatalf("an intermediate's response carrying its own certificate: %v %v; want good", res.Status, res.Err)
	}
	for _, c := range []struct {
		name, want string
		body       []byte
	}{
		{"garbage", "asn1", []byte("not ocsp")},
		{"signed by another CA", "signature", good(ca.Cert, other.Cert, other.Key, leaf.Cert.SerialNumber, hour)},
		{"another certificate", "no response matching", good(ca.Cert, ca.Cert, ca.Key, big.NewInt(12345), hour)},
		{"same serial, another issuer", "another issuer", good(other.Cert, ca.Cert, ca.Key, leaf.Cert.SerialNumber, hour)},
		{"delegated responder without the OCSP-signing EKU", "OCSP-signing", good(ca.Cert, noEKU.Cert, noEKU.Key, leaf.Cert.SerialNumber, hour)},
		{"expired", "expired", good(ca.Cert, ca.Cert, ca.Key, leaf.Cert.SerialNumber, time.Now().Add(-time.Minute))},
		{"oversized", "larger than", append(good(ca.Cert, ca.Cert, ca.Key, leaf.Cert.SerialNumber, hour), make([]byte, 70<<10)...)},
		{"unauthorized", "unauthorized", []byte{0x30, 0x03, 0x0a, 0x01, 0x06}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newResponder(t, ca)
			r.set(func(r *responder) { r.answer = func(*xocsp.Request) []byte { return c.body } })
			reg := prometheus.NewRegistry()
			set := newSet(t)
			res := newChecker(t, set, r.srv.URL, reg).Check(context.Background(), leaf.Cert, ca.Cert)
			if res.Status != ocsp.Unavailable || res.Err == nil || !strings.Contains(strings.ToLower(res.Err.Error()), strings.ToLower(c.want)) {
				t.Fatalf("status %v err %v; want unavailable because %q", res.Status, res.Err, c.want)
			}
			if v := metrictest.Value(t, reg, "guardian_ocsp_requests_total", "result", "error"); v != 1 {
				t.Errorf("guardian_ocsp_requests_total{result=error} = %v; want 1", v)
			}
			if set.Len() != 0 {
				t.Errorf("a bad response changed the Set")
			}
		})
	}
}

// A hanging responder costs a handshake at most the timeout, and later handshakes nothing
// until RetryAfter; soft lets them through, hard refuses, revoked is refused in both.
func TestModesAndAHangingResponder(t *testing.T) {
	ca := pkitest.NewCA(t)
	leaf := ca.MustIssue(t, pkitest.Opts{CommonName: "a"})
	r := newResponder(t, ca)
	r.set(func(r *responder) { r.delay = time.Hour })
	reg := prometheus.NewRegistry()
	c := newChecker(t, newSet(t), r.srv.URL, reg, func(o *ocsp.Options) { o.Timeout = 200 * time.Millisecond })
	cs := tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf.Cert, ca.Cert}}}
	start := time.Now()
	if err := c.VerifyConnection(ocsp.Soft)(cs); err != nil {
		t.Fatalf("soft with a hanging responder: %v; want allowed", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the handshake waited %v; the timeout is 200ms", d)
	}
	start = time.Now()
	if err := c.VerifyConnection(ocsp.Hard)(cs); !errors.Is(err, ocsp.ErrNotGood) {
		t.Fatalf("hard with a hanging responder: %v; want refused", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("a check within RetryAfter of a failure waited %v; want the remembered failure", d)
	}
	if v := metrictest.Value(t, reg, "guardian_ocsp_handshakes_total", "outcome", "soft_allowed"); v != 1 {
		t.Errorf("soft_allowed = %v; want 1", v)
	}
	if err := c.VerifyConnection(ocsp.Off)(cs); err != nil {
		t.Errorf("off: %v", err)
	}

	r2 := newResponder(t, ca)
	r2.set(func(r *responder) { r.revoked[leaf.Cert.SerialNumber.String()] = true })
	c2 := newChecker(t, newSet(t), r2.srv.URL, nil)
	for _, m := range []ocsp.Mode{ocsp.Soft, ocsp.Hard} {
		if err := c2.VerifyConnection(m)(cs); !errors.Is(err, ocsp.ErrNotGood) || !strings.Contains(err.Error(), "revoked") {
			t.Errorf("%v with a revoked answer: %v; want refused as revoked", m, err)
		}
	}
}

// Run re-asks about the certificates live conns hold before their answers expire: a
// revocation reaches the Set; an outage does not.
func TestRevalidation(t *testing.T) {
	ca := pkitest.NewCA(t)
	a, b := ca.MustIssue(t, pkitest.Opts{CommonName: "a"}), ca.MustIssue(t, pkitest.Opts{CommonName: "b"})
	r := newResponder(t, ca)
	set := newSet(t)
	c := newChecker(t, set, r.srv.URL, nil, func(o *ocsp.Options) { o.MaxAge = 300 * time.Millisecond; o.RetryAfter = 50 * time.Millisecond })
	for _, l := range []*pkitest.Leaf{a, b} {
		if res := c.Check(context.Background(), l.Cert, ca.Cert); res.Status != ocsp.Good {
			t.Fatalf("first check: %v", res.Status)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		c.Run(ctx, 50*time.Millisecond, func(yield func(leaf, issuer *x509.Certificate)) {
			yield(a.Cert, ca.Cert)
			yield(b.Cert, ca.Cert)
		})
		close(done)
	}()
	defer func() { cancel(); <-done }()

	r.set(func(r *responder) { r.status = 503 })
	time.Sleep(time.Second) // several answer lifetimes of outage
	if set.Len() != 0 {
		t.Fatal("a responder outage revoked a certificate")
	}
	r.set(func(r *responder) { r.status = 200; r.revoked[a.Cert.SerialNumber.String()] = true })
	ka, kb := revoke.KeySerialKey(ca.Cert.RawSubject, ca.Cert.RawSubjectPublicKeyInfo, a.Cert.SerialNumber), revoke.KeySerialKey(ca.Cert.RawSubject, ca.Cert.RawSubjectPublicKeyInfo, b.Cert.SerialNumber)
	deadline := time.Now().Add(10 * time.Second)
	for !set.Has(ka) {
		if time.Now().After(deadline) {
			t.Fatal("a revoked answer did not reach the Set within 10s of re-validation")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if set.Has(kb) {
		t.Fatal("b, still good, was revoked")
	}
}
