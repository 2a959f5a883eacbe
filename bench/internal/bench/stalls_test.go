package bench

import (
	"math"
	"os"
	"slices"
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
	ms := time.Millisecond
	d := diskTimes([][]diskSync{{{0, ms}, {3 * ms, 2 * ms}}, {{0, 30 * ms}, {40 * ms, 11 * ms}}}, 2)
	if d == nil || d.N != 4 || d.Over != 2 || d.PerSecond != 1 || d.Max != 30 {
		t.Errorf("disk times %+v, want 2 of 4 over 10 ms, 1 a second, max 30 ms", d)
	}
	if diskTimes(nil, 1) != nil || diskTimes([][]diskSync{{}}, 1) != nil {
		t.Error("no syncs: want nil")
	}
}

// TestDurableWaitIsTheRestOfTheSyncInProgressAndTheNext: a sync of 10 ms at 0 and one of
// 2 ms at 20 ms. An arrival during the first waits its rest and the second (12 ms falling
// to 2), one in the gap the second alone (2 ms): above 11.8 ms for 0.2 of the 20 ms (the
// p99), above 2 ms for half. The rest alone falls from 10 to 0 during the first: 9.8 ms.
func TestDurableWaitIsTheRestOfTheSyncInProgressAndTheNext(t *testing.T) {
	ms := time.Millisecond
	two := [][]diskSync{{{0, 10 * ms}, {20 * ms, 2 * ms}}}
	for _, c := range []struct {
		q    float64
		next bool
		want float64
	}{{0.99, true, 11.8}, {0.5, true, 2}, {0.99, false, 9.8}, {0.5, false, 0}} {
		if got := waitQuantile(two, c.q, c.next); math.Abs(got-c.want) > 0.002 {
			t.Errorf("q %v next %v: %v ms, want %v", c.q, c.next, got, c.want)
		}
	}
	if got := waitQuantile([][]diskSync{{{0, ms}}}, 0.99, true); got != 0 {
		t.Errorf("one sync spans no time: %v, want 0", got)
	}
}

// TestDurableWaitAgreesWithArrivalsSampled: on an irregular run of syncs (two passes),
// waitQuantile agrees with the quantile of the wait of arrivals a microsecond apart.
func TestDurableWaitAgreesWithArrivalsSampled(t *testing.T) {
	us := time.Microsecond
	var passes [][]diskSync
	for p := range 2 {
		var syncs []diskSync
		at := time.Duration(0)
		for i := range 400 {
			took := time.Duration(300+(i*7919+p*104729)%900) * us
			if i%97 == 13 {
				took = time.Duration(8+i%23) * time.Millisecond
			}
			syncs = append(syncs, diskSync{at, took})
			at += took + time.Duration(1500+(i*31)%1000)*us
		}
		passes = append(passes, syncs)
	}
	for _, next := range []bool{true, false} {
		var waits []time.Duration
		for _, syncs := range passes {
			for i := 0; i+1 < len(syncs); i++ {
				cur, nxt := syncs[i], syncs[i+1]
				for t := cur.at; t < nxt.at; t += us {
					var w time.Duration
					if t < cur.at+cur.took {
						w = cur.at + cur.took - t
					}
					if next {
						w += nxt.took
					}
					waits = append(waits, w)
				}
			}
		}
		slices.Sort(waits)
		sampled := float64(waits[int(0.99*float64(len(waits)))].Microseconds()) / 1000
		if got := waitQuantile(passes, 0.99, next); math.Abs(got-sampled) > 0.01 {
			t.Errorf("next %v: %v ms, sampled %v ms", next, got, sampled)
		}
	}
}
