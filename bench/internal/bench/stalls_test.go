package bench

import (
	"math"
	"os"
	"testing"
	"time"
)

// TestStallsCountTheObservationsAboveTheBound: Over counts above the smallest finite bound at
// or above the threshold and names it; stalls divides by the run's seconds, and has nothing
// to say of an empty histogram or one whose bounds all lie below the threshold.
func TestStallsCountTheObservationsAboveTheBound(t *testing.T) {
	h := Buckets{{0.004, 50}, {0.008, 90}, {0.016, 97}, {math.Inf(1), 100}}
	n, bound, ok := h.Over(0.010)
	if !ok || n != 3 || bound != 0.016 {
		t.Errorf("over 10 ms: %v above %v (%v), want 3 above 0.016", n, bound, ok)
	}
	if n, bound, _ := h.Over(0.008); n != 10 || bound != 0.008 {
		t.Errorf("over 8 ms: %v above %v, want 10 above a bound equal to it", n, bound)
	}
	st := stalls(h, 4)
	if st == nil || st.N != 100 || st.Over != 3 || st.OverMS != 16 || st.PerSecond != 0.75 {
		t.Errorf("stalls %+v, want 3 of 100 over 16 ms, 0.75 a second", st)
	}
	if st := stalls(Buckets{{0.004, 5}, {math.Inf(1), 9}}, 1); st != nil {
		t.Errorf("no bound at or above 10 ms: %+v, want nil", st)
	}
	if st := stalls(nil, 1); st != nil {
		t.Errorf("no histogram: %+v, want nil", st)
	}
}

// TestDiskProbeTimesRealSyncs: the probe syncs a file of its own in the directory given,
// about one every diskProbeGap, and removes it when finished; diskTimes counts the syncs
// over 10 ms.
func TestDiskProbeTimesRealSyncs(t *testing.T) {
	dir := t.TempDir()
	p := startDiskProbe(dir)
	if p == nil {
		t.Fatal("no probe")
	}
	time.Sleep(300 * time.Millisecond)
	times, wall := p.finish()
	if len(times) < 10 || len(times) > int(wall/diskProbeGap.Seconds())+1 {
		t.Errorf("%d syncs in %.2f s, want at least 10 and at most one per %v", len(times), wall, diskProbeGap)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("the probe left %d entries behind", len(left))
	}
	d := diskTimes([]time.Duration{time.Millisecond, 2 * time.Millisecond, 30 * time.Millisecond, 11 * time.Millisecond}, 2)
	if d == nil || d.N != 4 || d.Over != 2 || d.PerSecond != 1 || d.Max != 30 {
		t.Errorf("disk times %+v, want 2 of 4 over 10 ms, 1 a second, max 30 ms", d)
	}
	if diskTimes(nil, 1) != nil {
		t.Error("no syncs: want nil")
	}
}
