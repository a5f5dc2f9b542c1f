package daemon

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// registry is the Registerer a Node hands to everything it builds: it records what was
// registered, so that a failed New and Shutdown take it out of the caller's registry
// again, which can then take another Node.
type registry struct {
	prometheus.Registerer
	mu   sync.Mutex
	mine []prometheus.Collector
}

func (r *registry) Register(c prometheus.Collector) error {
	if err := r.Registerer.Register(c); err != nil {
		return err
	}
	r.mu.Lock()
	r.mine = append(r.mine, c)
	r.mu.Unlock()
	return nil
}

func (r *registry) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// unregisterAll takes out what the Node registered.
func (r *registry) unregisterAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.mine {
		r.Registerer.Unregister(c)
	}
	r.mine = nil
}

// listenerMetrics is the Registerer for one of the node's listeners: its metrics carry
// listener="data" or "admin", so that probes of the admin port do not count as the data
// port's.
func (r *registry) listenerMetrics(name string) prometheus.Registerer {
	return prometheus.WrapRegistererWith(prometheus.Labels{"listener": name}, r)
}
