// Package redisfeed makes Redis the fleet's source of truth for revocations: Store writes
// every change as one Lua script (the hash {prefix}:revoked, the counter {prefix}:version,
// and a record in the stream {prefix}:log that carries its version in its v field, under
// the ID "<version>-0" unless an entry someone else added sits above that), and Feed keeps a
// revoke.Set in step with it: an atomic snapshot, then XREAD BLOCK from the stream's last
// entry at the snapshot, applying records in version order. A version gap, a version that
// repeats, a trimmed or replaced stream, or a reconnect triggers a full resync, so a node
// misses no revocation, it only hears it late while Redis is unreachable.
//
// Entries in the stream that guardian did not write (no version, or one that does not fit)
// are counted, logged at a bounded rate and skipped; they never stop a write nor make a node
// resync in a loop. Resyncs back off while they bring no progress, and a feed that cannot
// follow a Redis that answers says so in Status().Stuck.
//
// A Redis that comes back with less than a node has seen (a restart without persistence, a
// failover to a lagging replica) is detected by its epoch key or a lower version; the node
// then keeps every entry it holds and reports the regression instead of unrevoking.
//
// redisfeed never closes connections: evictions follow from the Set's notifications.
package redisfeed
