// Package admin is guardian's operator API — revocations, live conns, CRLs in force, the
// fleet's heartbeats, /metrics, /healthz and /readyz — as an http.Handler (Server), and a
// typed Client for it, which the CLI uses.
//
// The API is served only behind an mTLS listener with its own CA; Server answers only the
// certificates it allows, refuses what a browser holding an admin certificate could be
// made to send from another site, and takes changes as application/json only. It owns no
// state of its own: it reads the node's Set and listener and writes to its Store.
package admin
