package conntrack

import "time"

// Clock is the time source for expiry. Tests inject a fake one so that no test sleeps for
// a certificate to expire.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine after d and returns a function that stops it.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

// SystemClock is the real clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// AfterFunc wraps time.AfterFunc.
func (SystemClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}
