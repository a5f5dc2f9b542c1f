// Package idleserver serves a listener the way a server holds idle keep-alive conns: each
// accepted conn is read until it ends, then closed. Tests and the bench harness use it to
// hold many live conns without an HTTP stack. It never writes to a conn.
package idleserver
