// Package conntrack owns who is connected: a Registry of live conns indexed by opaque
// string keys, that closes every conn a key hits and every conn whose time is up.
//
// conntrack knows nothing of x509 or TLS. It stores 63-bit keyed hashes of the keys, not
// the keys: a caller-supplied Confirm function checks the full key on every hit. It closes
// the raw conn it wraps (never a tls.Conn, whose close_notify write can block on a stalled
// peer), outside its locks, from a bounded pool of workers; it starts no goroutine per conn.
package conntrack
