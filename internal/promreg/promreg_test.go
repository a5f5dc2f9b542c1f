package promreg_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/internal/promreg"
)

func TestRegisterShares(t *testing.T) {
	reg := prometheus.NewRegistry()
	opts := prometheus.CounterOpts{Name: "x_total", Help: "x"}
	a, err := promreg.Register(reg, prometheus.NewCounter(opts))
	if err != nil {
		t.Fatal(err)
	}
	b, err := promreg.Register(reg, prometheus.NewCounter(opts))
	if err != nil {
		t.Fatal(err)
	}
	a.Inc()
	b.Inc()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if got := mfs[0].GetMetric()[0].GetCounter().GetValue(); got != 2 {
		t.Fatalf("got %v; want 2 (both increments in the one registered counter)", got)
	}
	// Same name, another type: an error, not a silent second counter.
	if _, err := promreg.Register(reg, prometheus.NewGauge(prometheus.GaugeOpts{Name: "x_total", Help: "x"})); err == nil {
		t.Fatal("a gauge under a counter's name registered")
	}
	// nil: nothing registered, the collector back.
	c := prometheus.NewCounter(opts)
	if got, err := promreg.Register(nil, c); err != nil || got != c {
		t.Fatalf("got %v, %v; want the same counter, nil", got, err)
	}
}
