package main

import (
	"os"
	"strconv"
	"strings"
)

// cpuTimes reads the machine's CPU time counters (jiffies) from /proc/stat: the total and
// the time stolen by the hypervisor for other guests. ok is false where /proc/stat is not.
func cpuTimes() (total, steal uint64, ok bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, false
	}
	for i, s := range f[1:] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, 0, false
		}
		if i < 8 { // user nice system idle iowait irq softirq steal; guest time is in user
			total += v
		}
		if i == 7 {
			steal = v
		}
	}
	return total, steal, true
}

// stealMeter measures the share of CPU time stolen from this machine during a phase: a
// noisy neighbour on the host shows here, beside the figures it distorts.
type stealMeter struct {
	total, steal uint64
	ok           bool
}

func startSteal() stealMeter {
	t, s, ok := cpuTimes()
	return stealMeter{t, s, ok}
}

// percent returns the stolen share since start, or -1 where it cannot be read.
func (m stealMeter) percent() float64 {
	t, s, ok := cpuTimes()
	if !ok || !m.ok || t <= m.total {
		return -1
	}
	return 100 * float64(s-m.steal) / float64(t-m.total)
}
