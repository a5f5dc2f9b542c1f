// Package boltstore is guardian's embedded revocation store, the default when no Redis is
// configured: entries live in one local bbolt file, survive restarts, and are loaded into
// the revoke.Set before the listener accepts its first conn. A change is written to the
// file first and applied to the Set only once it is durable, so a failed write changes
// nothing.
//
// boltstore never closes connections: evictions follow from the Set's notifications.
package boltstore
