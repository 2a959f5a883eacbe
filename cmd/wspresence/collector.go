package main

import (
	"context"
	"log/slog"
	"math"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// The server counts as under load from busyRate accepted messages a second on, and as
// quiet again after quietSeconds seconds in a row below it.
const (
	busyRate     = 200
	quietSeconds = 10
)

// collectorLoad is where the collector's setting stands: boosted (GOGC raised) while the
// server is under load, and for how many quiet seconds it has been.
type collectorLoad struct {
	boosted bool
	quiet   int
}

// next is the state after a second in which accepted messages were accepted; changed
// says the setting changes (to the load's GOGC if boosted, else back to the runtime's).
func (l collectorLoad) next(accepted int64) (_ collectorLoad, changed bool) {
	switch {
	case accepted >= busyRate:
		return collectorLoad{boosted: true}, !l.boosted
	case l.boosted:
		if l.quiet++; l.quiet >= quietSeconds {
			return collectorLoad{}, true
		}
	}
	return l, false
}

// collector applies the collector's settings for the load: the runtime's own (base GOGC,
// base memory limit) while idle; under load, GOGC off and a memory limit of the larger of
// floor bytes and the heap goal GOGC=busy would give (the live heap and the goroutine
// stacks, times 1+busy/100), re-derived from the live heap every second and never above
// the base limit. The floor spaces collections out when the live heap is small (each one scans
// the connections' stacks and buffers, whatever the garbage); the derived limit keeps
// the heap bounded by the live one when it is large.
type collector struct {
	busy      int
	floor     int64
	baseGOGC  int
	baseLimit int64
	state     collectorLoad
	samples   []metrics.Sample
}

// newCollector reads the runtime's settings, those put back while idle.
func newCollector(busy int, floor int64) *collector {
	base := debug.SetGCPercent(busy)
	debug.SetGCPercent(base)
	return &collector{
		busy: busy, floor: floor, baseGOGC: base, baseLimit: debug.SetMemoryLimit(-1),
		samples: []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/scan/stack:bytes"}},
	}
}

// second takes the messages accepted in the last second and applies the settings; it
// returns the memory limit set under load (0 while idle) and whether the load changed.
func (c *collector) second(accepted int64) (limit int64, changed bool) {
	c.state, changed = c.state.next(accepted)
	if !c.state.boosted {
		if changed {
			c.idle()
		}
		return 0, changed
	}
	limit = c.limit()
	if changed {
		debug.SetGCPercent(-1)
	}
	debug.SetMemoryLimit(limit)
	return limit, changed
}

// limit is the memory limit under load for the heap the last collection left.
func (c *collector) limit() int64 {
	metrics.Read(c.samples)
	var live, stacks uint64
	if s := c.samples[0]; s.Value.Kind() == metrics.KindUint64 {
		live = s.Value.Uint64()
	}
	if s := c.samples[1]; s.Value.Kind() == metrics.KindUint64 {
		stacks = s.Value.Uint64()
	}
	derived := float64(live+stacks) * (1 + float64(c.busy)/100)
	limit := c.floor
	if derived > float64(limit) {
		limit = int64(math.Min(derived, math.MaxInt64))
	}
	return min(limit, c.baseLimit)
}

// idle puts the runtime's settings back and returns the memory the load's heap held to
// the operating system (the heap's peak is otherwise what the process keeps).
func (c *collector) idle() {
	debug.SetMemoryLimit(c.baseLimit)
	debug.SetGCPercent(c.baseGOGC)
	debug.FreeOSMemory()
}

// governCollector drives the collector by a memory limit while the server accepts
// messages at load (accepted counts them; see collector), and puts the runtime's settings
// back once it has been quiet for quietSeconds, and when ctx ends.
func governCollector(ctx context.Context, accepted func() int64, busy int, floor int64, log *slog.Logger) {
	c := newCollector(busy, floor)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last := accepted()
	for {
		select {
		case <-ctx.Done():
			if c.state.boosted {
				c.idle()
			}
			return
		case <-tick.C:
		}
		n := accepted()
		limit, changed := c.second(n - last)
		last = n
		if changed {
			log.Debug("collector setting", "underLoad", c.state.boosted, "memoryLimit", limit)
		}
	}
}
