// Package daemon is the guardian daemon as a library: a Config (guardian.yaml: Load or
// Parse, or built in code) and a Node that runs it — one TLS port whose audiences are
// chosen by SNI and proxied to their upstreams through the binding middleware, an admin
// listener serving package admin's API, and the revocation sources (the embedded store or
// Redis, CRLs, OCSP) that feed the listener's Set, with staleness, readiness, heartbeats
// and pruning.
//
// A Node owns every listener, server and handler it starts: New listens, Run serves until
// its context ends, Reload applies the configuration file again (audiences, certificates,
// CA pools, upstreams, binding), Shutdown stops it. cmd/guardian is flags and signals over
// this package; tests start a Node and read its addresses.
//
// daemon never parses command-line flags, handles signals or writes to stdout.
package daemon
