// Package crl reads X.509 CRLs (RFC 5280) from files, URLs and Redis, checks them against
// the CAs the configuration trusts, and applies each CA key's CRL to the revoke.Set as a
// serial list, diffed against the one it replaces. A CRL speaks only for the key that
// verified it: its list, numbering and rollback checks are that key's (issuer DN and
// public key), and it denies keyserial keys, which only certificates that key issued have.
// It never closes a conn: the Set's change does, through the listener, as for every
// revocation.
//
// The parser streams: entries stay in the CRL's DER and are read in place, so a
// million-entry CRL is parsed, verified and indexed in a few hundred milliseconds and
// retains its DER plus an index (BENCHMARKS.md). It refuses what it cannot apply as one
// issuer's complete list (delta, indirect and reason-partitioned CRLs) and unknown
// critical extensions.
package crl
