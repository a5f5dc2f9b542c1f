// Package clock is the one time source guardian's packages take — conntrack and listener
// for expiry, the CRL applier and the OCSP checker for validity, the Redis feed for
// staleness, token binding for exp and nbf — so that a test decides what time it is and no
// test sleeps for a certificate to expire.
package clock

import "time"

// Clock tells the time and schedules work after a while.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine after d and returns a function that stops it.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

// System is the real clock.
type System struct{}

// Now returns time.Now().
func (System) Now() time.Time { return time.Now() }

// AfterFunc wraps time.AfterFunc.
func (System) AfterFunc(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }

// Or returns c, or the real clock when c is nil.
func Or(c Clock) Clock {
	if c == nil {
		return System{}
	}
	return c
}
