// Package redistest runs real redis-server processes for tests, each on a free loopback
// port with its own directory, and kills and restarts them for fault tests. It never
// touches a Redis it did not start (in particular not the shared one on 6379).
package redistest
