package main

import "testing"

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
