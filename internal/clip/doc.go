// Package clip shortens strings that outsiders control before they reach a log line or an
// error: a Host header, an SNI name, a record read from Redis.
package clip
