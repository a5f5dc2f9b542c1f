package crl_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/crl"
)

// Apply a CA's CRL file to the Set a listener checks: the certificates it lists are denied
// at the handshake, and their live conns closed; a rewritten file is picked up by Run.
func ExampleFile() {
	ca, _ := pkitest.New("example CA") // your client CA and the CRLs it publishes
	alice, _ := ca.Issue(pkitest.Opts{CommonName: "alice"})
	bob, _ := ca.Issue(pkitest.Opts{CommonName: "bob"})
	dir, _ := os.MkdirTemp("", "crl-example")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "ca.crl")
	publish := func(number int64, revoked ...*pkitest.Leaf) {
		var entries []x509.RevocationListEntry
		for _, l := range revoked {
			entries = append(entries, pkitest.Revoked(l.Cert.SerialNumber, 1)) // 1: keyCompromise
		}
		der, _ := ca.CRL(pkitest.CRLOpts{Number: number, Entries: entries})
		os.WriteFile(path+".tmp", der, 0o600)
		os.Rename(path+".tmp", path) // atomically: a reader never sees half a CRL
	}
	publish(1, alice)

	set, _ := revoke.NewSet(revoke.SetOptions{}) // hand it to listener.Config.Set
	// Only a CRL that one of Issuers signed is applied, and it denies only what that CA
	// key issued.
	app, err := crl.NewApplier(crl.Options{Set: set, Issuers: []*x509.Certificate{ca.Cert}})
	if err != nil {
		panic(err)
	}
	src := &crl.File{Path: path, Every: 100 * time.Millisecond, Applier: app} // Every: 2s by default
	// Load before the listener accepts: its revocations are then in force for the first conn.
	if err := src.Load(context.Background()); err != nil {
		panic(err)
	}
	fmt.Println("loaded:", src.Loaded())

	// A CRL names its CA key's serials: match the verified chain, root included, as the
	// listener has it (ConnInfo.Chains), not the leaf alone.
	revoked := func(l *pkitest.Leaf) string {
		chains, err := l.Cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if err != nil {
			panic(err)
		}
		if e, ok := set.AnyOf(revoke.KeysOfChains(chains)); ok {
			return fmt.Sprintf("revoked (%s key, %s)", e.Key.Kind(), e.Reason)
		}
		return "not revoked"
	}
	fmt.Println("alice:", revoked(alice))
	fmt.Println("bob:", revoked(bob))

	// Run re-reads the file when it changes; a broken one leaves the last good CRL in force.
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { src.Run(ctx); close(stopped) }()
	defer func() { cancel(); <-stopped }()

	publish(2, alice, bob)
	for deadline := time.Now().Add(10 * time.Second); revoked(bob) == "not revoked" && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Println("bob after CRL 2:", revoked(bob))
	for _, a := range app.Applied() {
		fmt.Printf("in force: CRL %v of %s, %d entries\n", a.Number, a.Subject, a.Entries)
	}

	// Output:
	// loaded: true
	// alice: revoked (keyserial key, keyCompromise)
	// bob: not revoked
	// bob after CRL 2: revoked (keyserial key, keyCompromise)
	// in force: CRL 2 of CN=example CA,O=guardian test, 2 entries
}
