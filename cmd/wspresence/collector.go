package main

import (
	"context"
	"log/slog"
	"runtime/debug"
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

// governCollector raises the collector's GOGC to busy while the server accepts messages
// at load (accepted counts them), and sets the runtime's own back once it has been quiet
// for quietSeconds, and when ctx ends. Under load a collection costs the same whatever
// the garbage (the 4,000 connections' stacks and buffers are scanned every time), so
// fewer, larger ones cost less CPU per message; while idle the runtime's setting keeps
// the memory of idle connections low (the heap's peak is what the process keeps). A
// memory limit (GOMEMLIMIT) still bounds the heap under load.
func governCollector(ctx context.Context, accepted func() int64, busy int, log *slog.Logger) {
	base := debug.SetGCPercent(busy) // read the runtime's setting
	debug.SetGCPercent(base)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var state collectorLoad
	last := accepted()
	for {
		select {
		case <-ctx.Done():
			if state.boosted {
				debug.SetGCPercent(base)
			}
			return
		case <-tick.C:
		}
		n := accepted()
		var changed bool
		state, changed = state.next(n - last)
		last = n
		if !changed {
			continue
		}
		gogc := base
		if state.boosted {
			gogc = busy
		}
		debug.SetGCPercent(gogc)
		log.Debug("collector setting", "gogc", gogc, "underLoad", state.boosted)
	}
}
