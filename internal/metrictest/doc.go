// Package metrictest reads single values out of a Prometheus registry in tests. It is
// for tests only and never registers anything.
package metrictest
