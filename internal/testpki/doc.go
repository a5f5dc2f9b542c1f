// Package testpki is a small certificate authority for tests and for `guardian pki init`:
// roots, intermediates, and leaves with chosen serials, SANs and validity.
//
// It is for tests and throw-away development PKIs only: keys are generated in memory and
// written unencrypted. It never talks to the network.
package testpki
