package listener

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/internal/promreg"
)

type metrics struct {
	handshakes   *prometheus.CounterVec
	failures     *prometheus.CounterVec
	acceptErrors prometheus.Counter
	shed         *prometheus.CounterVec
	idleClosed   *prometheus.CounterVec
}

// newMetrics registers the listener's metrics on reg, or takes the ones registered there
// already: listeners sharing a Registerer count into the same metrics.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_handshakes_total", Help: "Handshakes completed and tracked, by audience and kind (full, resumed).",
		}, []string{"audience", "kind"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_handshake_failures_total", Help: "Handshakes refused or failed, by reason.",
		}, []string{"reason"}),
		acceptErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "guardian_accept_errors_total", Help: "Errors from the wrapped listener's Accept, each retried.",
		}),
		shed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_conns_shed_total",
			Help: "Conns closed or refused at max_conns, by kind: anonymous (a served conn without a client certificate, closed to make room), refused (a new conn, with every slot held by a certificate), unaccepted (a handshaken conn the server had not taken, at max_handshakes).",
		}, []string{"kind"}),
		idleClosed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_conns_idle_closed_total", Help: "Conns closed after their audience's idle_timeout without a request, by audience.",
		}, []string{"audience"}),
	}
	var err error
	register := func(c prometheus.Collector) prometheus.Collector {
		if err == nil {
			c, err = promreg.Register(reg, c)
		}
		return c
	}
	m.handshakes = register(m.handshakes).(*prometheus.CounterVec)
	m.failures = register(m.failures).(*prometheus.CounterVec)
	m.acceptErrors = register(m.acceptErrors).(prometheus.Counter)
	m.shed = register(m.shed).(*prometheus.CounterVec)
	m.idleClosed = register(m.idleClosed).(*prometheus.CounterVec)
	if err != nil {
		return nil, fmt.Errorf("listener: register metrics: %w", err)
	}
	return m, nil
}
