package revoke

import "context"

// Store is where revocations are written: a change is recorded by the store first, and
// reaches the Set of this node — and, for a store the fleet shares, of every node — from
// there. The embedded store (boltstore), Redis (redisfeed) and MemoryStore implement it.
type Store interface {
	// Revoke records e and returns the change's version in the store's numbering.
	Revoke(ctx context.Context, e Entry) (version uint64, err error)
	// Unrevoke removes k; changed is false when k was not revoked.
	Unrevoke(ctx context.Context, k Key) (version uint64, changed bool, err error)
}

// MemoryStore returns a Store that is s alone: its changes last as long as the process.
func MemoryStore(s *Set) Store { return memoryStore{s} }

type memoryStore struct{ set *Set }

func (m memoryStore) Revoke(_ context.Context, e Entry) (uint64, error) {
	ch, err := m.set.Add(SourceAPI, e)
	return ch.Version, err
}

func (m memoryStore) Unrevoke(_ context.Context, k Key) (uint64, bool, error) {
	ch, err := m.set.Remove(SourceAPI, k)
	return ch.Version, len(ch.Removed) > 0, err
}
