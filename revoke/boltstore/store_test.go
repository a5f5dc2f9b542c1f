package boltstore_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/boltstore"
)

const k1 = revoke.Key("uri:spiffe://prod/a")
const k2 = revoke.Key("dns:b.example")

func open(t *testing.T, path string) (*boltstore.Store, *revoke.Set, map[string]error) {
	t.Helper()
	set, _ := revoke.NewSet(revoke.SetOptions{})
	s, skipped, err := boltstore.Open(path, set, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s, set, skipped
}

// Revocations survive a restart (close and reopen of the file); unrevokes too.
func TestSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "guardian.db")
	s, set, _ := open(t, path)
	ctx := context.Background()
	if _, err := s.Revoke(ctx, revoke.Entry{Key: k1, Reason: "keyCompromise", RevokedAt: time.Now().UTC(), Source: "api"}); err != nil {
		t.Fatal(err)
	}
	s.Revoke(ctx, revoke.Entry{Key: k2, Source: "api"})
	if !set.Has(k1) || !set.Has(k2) {
		t.Fatal("Revoke did not reach the Set")
	}
	if _, changed, err := s.Unrevoke(ctx, k2); err != nil || !changed {
		t.Fatalf("Unrevoke: changed=%v err=%v", changed, err)
	}
	if _, changed, _ := s.Unrevoke(ctx, k2); changed {
		t.Fatal("second Unrevoke reported a change")
	}
	s.Close()

	s2, set2, _ := open(t, path)
	defer s2.Close()
	if !set2.Has(k1) || set2.Has(k2) || set2.Len() != 1 {
		t.Fatalf("after reopening: %v; want only %s", set2.Entries(), k1)
	}
	if e, _ := set2.Lookup(k1); e.Reason != "keyCompromise" || e.Source != revoke.SourceEmbedded {
		t.Errorf("entry after reopening = %+v", e)
	}
}

func TestRefusesBadKeysAndSkipsBadRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "guardian.db")
	s, set, _ := open(t, path)
	if _, err := s.Revoke(context.Background(), revoke.Entry{Key: "dns:UPPER.example"}); err == nil {
		t.Fatal("non-canonical key stored")
	}
	s.Revoke(context.Background(), revoke.Entry{Key: k1})
	s.Close()
	// Damage the file's contents the way a bad tool would.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("revoked"))
		b.Put([]byte("sha256:zz"), []byte(`{"key":"sha256:zz"}`))
		b.Put([]byte(k2), []byte(`not json`))
		return nil
	})
	db.Close()
	s2, set2, skipped := open(t, path)
	defer s2.Close()
	if len(skipped) != 2 || set2.Len() != 1 || !set2.Has(k1) {
		t.Fatalf("skipped %v, set %v; want the 2 bad records skipped and the good one loaded", skipped, set2.Entries())
	}
	_ = set
}

func TestSecondOpenFailsClearly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "guardian.db")
	s, _, _ := open(t, path)
	defer s.Close()
	set, _ := revoke.NewSet(revoke.SetOptions{})
	_, _, err := boltstore.Open(path, set, nil)
	if err == nil || !strings.Contains(err.Error(), "another guardian") {
		t.Fatalf("second Open: %v; want a clear lock error", err)
	}
}
