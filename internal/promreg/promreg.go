// Package promreg registers a library's collectors on a caller's prometheus.Registerer so
// that two instances (two listeners, say) can share one: the second gets the collector the
// first registered, and both count into it.
package promreg

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Register registers c with reg and returns it, or, when a collector of the same
// descriptors and type is registered already, returns that one. A nil reg registers
// nothing and returns c.
func Register[T prometheus.Collector](reg prometheus.Registerer, c T) (T, error) {
	if reg == nil {
		return c, nil
	}
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(T); ok {
			return existing, nil
		}
	}
	return c, err
}
