// Package fakeclock is a manually advanced clock for tests of expiry and staleness. It
// satisfies clock.Clock; it never reads the real time after New.
package fakeclock
