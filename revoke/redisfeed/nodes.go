package redisfeed

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// NodeStatus is a node's heartbeat: what it has applied and what it is holding.
type NodeStatus struct {
	ID        string    `json:"id"`
	Applied   uint64    `json:"applied"`
	Epoch     string    `json:"epoch,omitempty"`
	Conns     int       `json:"conns"`
	Evictions uint64    `json:"evictions"`
	Regressed bool      `json:"regressed,omitempty"`
	At        time.Time `json:"at"`
	// Matched maps recently revoked keys to how many of this node's live conns each hit.
	Matched map[string]int `json:"matched,omitempty"`
}

func (s *Store) nodeKey(id string) string { return "{" + s.pfx + "}:node:" + id }
func (s *Store) nodesKey() string         { return "{" + s.pfx + "}:nodes" }

// Heartbeat records ns for ttl. Heartbeats older than an hour are pruned from the index.
func (s *Store) Heartbeat(ctx context.Context, ns NodeStatus, ttl time.Duration) error {
	b, err := json.Marshal(ns)
	if err != nil {
		return err
	}
	now := ns.At.UnixMilli()
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, s.nodeKey(ns.ID), b, ttl)
		p.ZAdd(ctx, s.nodesKey(), redis.Z{Score: float64(now), Member: ns.ID})
		p.ZRemRangeByScore(ctx, s.nodesKey(), "-inf", strconv.FormatInt(now-time.Hour.Milliseconds(), 10))
		return nil
	})
	if err != nil {
		return fmt.Errorf("redisfeed: heartbeat: %w", err)
	}
	return nil
}

// LiveNodes returns the nodes whose heartbeat has not expired, sorted by ID.
func (s *Store) LiveNodes(ctx context.Context) ([]NodeStatus, error) {
	ids, err := s.rdb.ZRange(ctx, s.nodesKey(), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("redisfeed: list nodes: %w", err)
	}
	var out []NodeStatus
	if len(ids) == 0 {
		return nil, nil
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = s.nodeKey(id)
	}
	vals, err := s.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, fmt.Errorf("redisfeed: read nodes: %w", err)
	}
	for _, v := range vals {
		str, ok := v.(string)
		if !ok {
			continue // expired: the node is gone
		}
		var ns NodeStatus
		if json.Unmarshal([]byte(str), &ns) == nil && ns.ID != "" {
			out = append(out, ns)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// WaitApplied polls until every live node has applied version, or ctx ends. It returns the
// live nodes' last statuses and the IDs of those that had not confirmed.
func (s *Store) WaitApplied(ctx context.Context, version uint64) (nodes []NodeStatus, missing []string, err error) {
	return WaitApplied(ctx, version, s.LiveNodes)
}

// WaitApplied polls live (a Store's LiveNodes, or a node's admin API) until at least one
// node is live and every live node has applied version, or ctx ends. It returns the live
// nodes' last statuses and the IDs of those that had not confirmed; an error only when
// live fails before ctx ends.
func WaitApplied(ctx context.Context, version uint64, live func(context.Context) ([]NodeStatus, error)) (nodes []NodeStatus, missing []string, err error) {
	for {
		got, err := live(ctx)
		switch {
		case err == nil:
			nodes = got
		case ctx.Err() == nil:
			return nil, nil, err
		}
		missing = missing[:0]
		for _, n := range nodes {
			if n.Applied < version {
				missing = append(missing, n.ID)
			}
		}
		if len(nodes) > 0 && len(missing) == 0 {
			return nodes, nil, nil
		}
		select {
		case <-ctx.Done():
			return nodes, missing, nil
		case <-time.After(50 * time.Millisecond):
		}
	}
}
