package main

import (
	"math"
	"runtime"
	"runtime/debug"
	"testing"
)

// The collector's setting is raised in the first second at load, stays raised through
// short lulls, and goes back after quietSeconds quiet seconds in a row.
func TestCollectorLoad(t *testing.T) {
	var l collectorLoad
	step := func(accepted int64, wantBoosted, wantChanged bool) {
		t.Helper()
		var changed bool
		l, changed = l.next(accepted)
		if l.boosted != wantBoosted || changed != wantChanged {
			t.Fatalf("after %d accepted: boosted %v changed %v, want %v %v", accepted, l.boosted, changed, wantBoosted, wantChanged)
		}
	}
	step(busyRate-1, false, false) // quiet: nothing to change
	step(busyRate, true, true)     // load: raised
	step(4000, true, false)
	for range quietSeconds - 1 {
		step(10, true, false) // a lull shorter than quietSeconds
	}
	step(busyRate, true, false) // load again: the quiet count starts over
	for range quietSeconds - 1 {
		step(0, true, false)
	}
	step(0, false, true) // quiet long enough: back
	step(0, false, false)
}

// restoreCollector puts the runtime's collector settings back after a test changes them.
func restoreCollector(t *testing.T) {
	gogc := debug.SetGCPercent(100)
	debug.SetGCPercent(gogc)
	limit := debug.SetMemoryLimit(-1)
	t.Cleanup(func() {
		debug.SetGCPercent(gogc)
		debug.SetMemoryLimit(limit)
	})
}

func gcPercent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

// Under load the collector runs off a memory limit (GOGC off), at least the floor; once
// the load has passed, the runtime's GOGC and limit are back.
func TestCollectorMemoryLimitUnderLoad(t *testing.T) {
	restoreCollector(t)
	debug.SetGCPercent(100)
	debug.SetMemoryLimit(math.MaxInt64)
	const floor = 1 << 30
	c := newCollector(400, floor)
	if limit, changed := c.second(busyRate); !changed || limit < floor {
		t.Fatalf("at load: limit %d changed %v, want at least %d and a change", limit, changed, floor)
	}
	if got := gcPercent(); got != -1 {
		t.Fatalf("GOGC under load %d, want off (-1)", got)
	}
	if got := debug.SetMemoryLimit(-1); got < floor || got == math.MaxInt64 {
		t.Fatalf("memory limit under load %d, want at least %d", got, floor)
	}
	for range quietSeconds {
		c.second(0)
	}
	if got := gcPercent(); got != 100 {
		t.Fatalf("GOGC once idle %d, want the runtime's 100", got)
	}
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Fatalf("memory limit once idle %d, want none", got)
	}
}

// The limit follows the live heap when it is larger than the floor allows for (the heap
// stays bounded by the live one times 1+GOGC/100), and never passes the runtime's own limit.
func TestCollectorLimitFollowsTheLiveHeap(t *testing.T) {
	restoreCollector(t)
	debug.SetMemoryLimit(math.MaxInt64)
	live := make([][]byte, 64)
	for i := range live {
		live[i] = make([]byte, 1<<20)
	}
	runtime.GC()
	c := newCollector(400, 1)
	limit, _ := c.second(busyRate)
	if want := int64(64<<20) * 5; limit < want {
		t.Fatalf("limit %d with 64 MiB live at GOGC 400, want at least %d", limit, want)
	}
	if limit > 8<<30 {
		t.Fatalf("limit %d with 64 MiB live, want one derived from it", limit)
	}
	runtime.KeepAlive(live)
	for range quietSeconds {
		c.second(0)
	}

	const base = 256 << 20
	debug.SetMemoryLimit(base)
	c = newCollector(400, 1<<30)
	if limit, _ := c.second(busyRate); limit != base {
		t.Fatalf("limit %d under GOMEMLIMIT %d, want it", limit, base)
	}
	for range quietSeconds {
		c.second(0)
	}
	if got := debug.SetMemoryLimit(-1); got != base {
		t.Fatalf("memory limit once idle %d, want GOMEMLIMIT's %d", got, base)
	}
}
