package boltstore

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/guardian-mtls/guardian/revoke"
)

var bucket = []byte("revoked")

// Store is a revocation store in a bbolt file.
type Store struct {
	db   *bolt.DB
	set  *revoke.Set
	path string
	mu   sync.Mutex // orders file writes with their application to the Set
}

// Open opens (creating if needed) the file at path and loads its entries into set. Entries
// that do not parse are skipped and returned in skipped with the reason; they stay in the
// file for an operator to inspect.
func Open(path string, set *revoke.Set, log *slog.Logger) (s *Store, skipped map[string]error, err error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, nil, fmt.Errorf("boltstore: open %s: %w (is another guardian using it?)", path, err)
	}
	s = &Store{db: db, set: set, path: path}
	var entries []revoke.Entry
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucket)
		if err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			e, err := parse(k, v)
			if err != nil {
				if skipped == nil {
					skipped = map[string]error{}
				}
				skipped[string(k)] = err
				return nil
			}
			entries = append(entries, e)
			return nil
		})
	})
	if err == nil {
		_, err = set.Add(revoke.SourceEmbedded, entries...)
	}
	if err != nil {
		db.Close()
		return nil, nil, fmt.Errorf("boltstore: load %s: %w", path, err)
	}
	if log != nil {
		for k, why := range skipped {
			log.Error("skipped a malformed entry in the embedded store", "path", path, "key", k, "err", why)
		}
		log.Info("loaded revocations from the embedded store", "path", path, "entries", len(entries))
	}
	return s, skipped, nil
}

func parse(k, v []byte) (revoke.Entry, error) {
	var e revoke.Entry
	if err := json.Unmarshal(v, &e); err != nil {
		return e, fmt.Errorf("not JSON: %w", err)
	}
	key, err := revoke.ParseKey(string(k))
	if err != nil {
		return e, err
	}
	if key != revoke.Key(k) || e.Key != key {
		return e, fmt.Errorf("entry key %q does not match %q, or is not canonical", e.Key, k)
	}
	return e, nil
}

// Revoke stores e durably, then adds it to the Set; the version is the Set's.
func (s *Store) Revoke(_ context.Context, e revoke.Entry) (uint64, error) {
	if c, err := revoke.ParseKey(string(e.Key)); err != nil || c != e.Key {
		if err == nil {
			err = fmt.Errorf("key %q is not canonical", e.Key)
		}
		return 0, err
	}
	e.Source = revoke.SourceEmbedded // the store is one source, whoever wrote to it
	b, err := json.Marshal(e)
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(e.Key), b) }); err != nil {
		return 0, fmt.Errorf("boltstore: write %s: %w", s.path, err)
	}
	ch, err := s.set.Add(revoke.SourceEmbedded, e)
	return ch.Version, err
}

// Unrevoke deletes k durably, then removes it from the Set. changed is false if k was not
// in the store.
func (s *Store) Unrevoke(_ context.Context, k revoke.Key) (version uint64, changed bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	found := false
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b.Get([]byte(k)) == nil {
			return nil
		}
		found = true
		return b.Delete([]byte(k))
	})
	if err != nil {
		return 0, false, fmt.Errorf("boltstore: write %s: %w", s.path, err)
	}
	if !found {
		return 0, false, nil
	}
	ch, err := s.set.Remove(revoke.SourceEmbedded, k)
	return ch.Version, true, err
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

var _ revoke.Store = (*Store)(nil)
