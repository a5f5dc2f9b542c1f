package redisfeed_test

import (
	"context"
	"fmt"
	"time"

	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

// Keep a node's Set in step with the fleet's revocations in Redis: a revocation that any
// node (or `guardian revoke`) writes reaches every node's Set, and so closes the matching
// conns of every listener that uses that Set.
func ExampleFeed() {
	redisURL := exampleRedisURL // your Redis, e.g. redis://127.0.0.1:6379/0
	ctx, cancel := context.WithCancel(context.Background())

	rdb, err := redisfeed.NewClient(redisfeed.ClientConfig{URL: redisURL})
	if err != nil {
		panic(err)
	}
	defer rdb.Close()
	store := redisfeed.NewStore(rdb, "", 0)      // the fleet's keys, under the default prefix
	set, _ := revoke.NewSet(revoke.SetOptions{}) // hand it to listener.Config.Set
	feed, err := redisfeed.NewFeed(store, set, redisfeed.FeedOptions{})
	if err != nil {
		panic(err)
	}
	stopped := make(chan struct{})
	go func() { feed.Run(ctx); close(stopped) }() // retries Redis errors until ctx ends
	defer func() { cancel(); <-stopped }()

	// Accept no conn before the first snapshot is in: until then the Set lacks the fleet's
	// revocations.
	select {
	case <-feed.Synced():
		fmt.Println("synced")
	case <-time.After(10 * time.Second):
		fmt.Println("not synced within 10s")
		return
	}

	// Hear each change as the listener does (Subscribe runs fn on the feed's goroutine:
	// hand the change over, never block).
	changes := make(chan revoke.Change, 16)
	defer set.Subscribe(func(ch revoke.Change) {
		select {
		case changes <- ch:
		default:
		}
	})()
	next := func() {
		select {
		case ch := <-changes:
			for _, e := range ch.Added {
				fmt.Printf("revoked in this node's Set: %s (%s, from %s)\n", e.Key, e.Reason, e.Source)
			}
			for _, k := range ch.Removed {
				fmt.Println("unrevoked in this node's Set:", k)
			}
		case <-time.After(10 * time.Second):
			fmt.Println("no change within 10s")
		}
	}

	// Another node, or `guardian revoke`, writes to Redis, never to a Set.
	alice := revoke.MustParseKey("uri:spiffe://example/alice")
	if _, err := store.Revoke(ctx, revoke.Entry{Key: alice, Reason: "keyCompromise", RevokedAt: time.Now()}); err != nil {
		panic(err)
	}
	next()
	fmt.Println("alice revoked:", set.Has(alice))

	if _, _, err := store.Unrevoke(ctx, alice); err != nil {
		panic(err)
	}
	next()
	fmt.Println("alice revoked:", set.Has(alice))

	// Output:
	// synced
	// revoked in this node's Set: uri:spiffe://example/alice (keyCompromise, from redis)
	// alice revoked: true
	// unrevoked in this node's Set: uri:spiffe://example/alice
	// alice revoked: false
}
