// Package ocsp asks OCSP responders (RFC 6960) about client certificates: at the handshake,
// per audience in soft or hard mode, and again in the background before a cached answer
// that live conns rely on expires. A revoked answer becomes a keyserial entry (issuer DN,
// issuer key, serial) with source "ocsp" in the revoke.Set, so it closes conns the way every revocation does; this package
// closes nothing itself, and a responder outage never revokes.
//
// It checks what golang.org/x/crypto/ocsp leaves out: that a delegated responder holds the
// OCSP-signing extended key usage, and that the answer's CertID names the certificate's
// issuer, not only its serial.
package ocsp
