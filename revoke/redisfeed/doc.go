// Package redisfeed makes Redis the fleet's source of truth for revocations: Store writes
// every change as one Lua script (the hash {prefix}:revoked, the counter {prefix}:version,
// and a record in the stream {prefix}:log whose ID is "<version>-0"), and Feed keeps a
// revoke.Set in step with it: an atomic snapshot, then XREAD BLOCK from the snapshot's
// version, applying records in order. A version gap, a trimmed stream or a reconnect
// triggers a full resync, so a node misses no revocation, it only hears it late while Redis
// is unreachable.
//
// A Redis that comes back with less than a node has seen (a restart without persistence, a
// failover to a lagging replica) is detected by its epoch key or a lower version; the node
// then keeps every entry it holds and reports the regression instead of unrevoking.
//
// redisfeed never closes connections: evictions follow from the Set's notifications.
package redisfeed
