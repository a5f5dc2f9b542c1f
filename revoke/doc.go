// Package revoke owns what is revoked: the canonical Key a certificate can be denied by,
// the Entry that records why, and the Set, the in-memory denylist that every source
// (Redis, the embedded store, CRLs, OCSP, the admin API) feeds.
//
// revoke knows nothing of sockets or connections. Every change to a Set is delivered, in
// order, to its subscribers; the listener subscribes and turns added keys into evictions.
package revoke
