package main

import (
	"context"

	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/boltstore"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

// revocationStore is where the admin API writes: the configured store, which then brings
// the node's Set (and, for Redis, the fleet's) in line.
type revocationStore interface {
	// Revoke returns the version of the change in the store's own numbering.
	Revoke(ctx context.Context, e revoke.Entry) (uint64, error)
	Unrevoke(ctx context.Context, k revoke.Key) (changed bool, err error)
}

// memStore is the Set alone: for tests and the demo.
type memStore struct{ set *revoke.Set }

func (m memStore) Revoke(_ context.Context, e revoke.Entry) (uint64, error) {
	ch, err := m.set.Add(revoke.SourceAPI, e)
	return ch.Version, err
}

func (m memStore) Unrevoke(_ context.Context, k revoke.Key) (bool, error) {
	ch, err := m.set.Remove(revoke.SourceAPI, k)
	return len(ch.Removed) > 0, err
}

type boltAdapter struct{ s *boltstore.Store }

func (b boltAdapter) Revoke(ctx context.Context, e revoke.Entry) (uint64, error) {
	return b.s.Revoke(ctx, e)
}

func (b boltAdapter) Unrevoke(ctx context.Context, k revoke.Key) (bool, error) {
	_, changed, err := b.s.Unrevoke(ctx, k)
	return changed, err
}

// redisAdapter writes to Redis; this node, like every other, applies the change when its
// feed reads it back.
type redisAdapter struct{ s *redisfeed.Store }

func (r redisAdapter) Revoke(ctx context.Context, e revoke.Entry) (uint64, error) {
	return r.s.Revoke(ctx, e)
}

func (r redisAdapter) Unrevoke(ctx context.Context, k revoke.Key) (bool, error) {
	_, changed, err := r.s.Unrevoke(ctx, k)
	return changed, err
}
