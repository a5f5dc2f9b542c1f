package redisfeed_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/guardian-mtls/guardian/internal/redistest"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

func startNodeWith(t *testing.T, rdb redis.UniversalClient) *node {
	t.Helper()
	n := &node{metrics: prometheus.NewRegistry()}
	n.set, _ = revoke.NewSet(revoke.SetOptions{})
	var err error
	n.feed, err = redisfeed.NewFeed(redisfeed.NewStore(rdb, "", 0), n.set, redisfeed.FeedOptions{Block: 200 * time.Millisecond, Metrics: n.metrics})
	if err != nil {
		t.Fatal(err)
	}
	n.run(t)
	return n
}

// A Sentinel failover with real redis-sentinel: revocations written before (and replicated)
// and after the failover are all applied; no regression is reported.
func TestSentinelFailover(t *testing.T) {
	master := redistest.Start(t, redistest.Options{})
	replica := redistest.Start(t, redistest.Options{ReplicaOf: master.Addr()})
	sentinel := redistest.StartSentinel(t, master)
	cc := redisfeed.ClientConfig{MasterName: "mymaster", Addrs: []string{sentinel.Addr()}}
	writerClient, err := redisfeed.NewClient(cc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { writerClient.Close() })
	nodeClient, _ := redisfeed.NewClient(cc)
	t.Cleanup(func() { nodeClient.Close() })
	n := startNodeWith(t, nodeClient)
	st := redisfeed.NewStore(writerClient, "", 0)
	revokeN(t, st, key(1), key(2))
	// Replicated before the master dies: WAIT for the replica's acknowledgement.
	direct := redis.NewClient(&redis.Options{Addr: master.Addr()})
	if got, err := direct.Do(context.Background(), "WAIT", 1, 5000).Int(); err != nil || got != 1 {
		t.Fatalf("WAIT for the replica: %d, %v", got, err)
	}
	direct.Close()
	eventually(t, "applied before failover", func() bool { return n.set.Has(key(2)) })

	master.Kill()
	// Write through Sentinel until the promoted replica takes it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := st.Revoke(ctx, revoke.Entry{Key: key(3)})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no writable master 30s after the failover began: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	revokeN(t, st, key(4))
	eventually(t, "applied after failover", func() bool {
		return n.set.Has(key(1)) && n.set.Has(key(2)) && n.set.Has(key(3)) && n.set.Has(key(4))
	})
	if st := n.feed.Status(); st.Regressed {
		t.Fatalf("a clean failover was reported as a regression: %s", st.Reason)
	}
	_ = replica
}

// A three-master Redis Cluster: every key of a fleet shares one hash tag, so the change
// script, the snapshot transaction and XREAD all work against the slot's master.
func TestClusterThreeMasters(t *testing.T) {
	servers := redistest.StartCluster(t, 3)
	var addrs []string
	for _, s := range servers {
		addrs = append(addrs, s.Addr())
	}
	cc := redisfeed.ClientConfig{Addrs: addrs}
	rdb, err := redisfeed.NewClient(cc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	if _, ok := rdb.(*redis.ClusterClient); !ok {
		t.Fatalf("addrs without master_name gave a %T; want a cluster client", rdb)
	}
	st := redisfeed.NewStore(rdb, "", 0)
	revokeN(t, st, key(1))
	nodeClient, _ := redisfeed.NewClient(cc)
	t.Cleanup(func() { nodeClient.Close() })
	n := startNodeWith(t, nodeClient)
	if !n.set.Has(key(1)) {
		t.Fatal("snapshot from the cluster missed an entry")
	}
	revokeN(t, st, key(2), key(3))
	if _, _, err := st.Unrevoke(context.Background(), key(1)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "streamed from the cluster", func() bool {
		return n.set.Has(key(2)) && n.set.Has(key(3)) && !n.set.Has(key(1))
	})
	// Entries guardian did not write, in the fleet's slot: the scripts still write, the node
	// still follows.
	for i, id := range []string{"*", "9999999999999-0", "18446744073709551615-18446744073709551615"} {
		if err := rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: st.Keys().Log, ID: id, Values: []any{"x", "y"}}).Err(); err != nil {
			t.Fatal(err)
		}
		v := revokeN(t, st, key(10+i))
		eventually(t, "streamed from the cluster after a foreign entry at "+id, func() bool {
			return n.set.Has(key(10+i)) && n.feed.Status().Applied == v
		})
	}
	if err := st.Heartbeat(context.Background(), redisfeed.NodeStatus{ID: "n1", Applied: 4, At: time.Now()}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if nodes, err := st.LiveNodes(context.Background()); err != nil || len(nodes) != 1 {
		t.Fatalf("LiveNodes on a cluster: %v, %v", nodes, err)
	}
}
