package bench

import (
	"math"
	"testing"
)

// TestBucketsQuantileInterpolatesWithinTheBucket: a quantile falls in the first bucket whose
// cumulative count reaches its rank, linearly between that bucket's bounds (the first from
// 0); one past every finite bound is the last finite bound; no observations give NaN. Since
// and Add subtract and add two scrapes bucket by bucket.
func TestBucketsQuantileInterpolatesWithinTheBucket(t *testing.T) {
	before := Buckets{{0.001, 10}, {0.002, 10}, {0.004, 10}, {math.Inf(1), 10}}
	after := Buckets{{0.001, 60}, {0.002, 100}, {0.004, 109}, {math.Inf(1), 110}}
	h := after.Since(before) // 50 at or below 1 ms, 40 in (1, 2], 9 in (2, 4], 1 above
	for _, c := range []struct{ q, want float64 }{
		{0.5, 0.001},              // rank 50: the first bucket's top
		{0.25, 0.0005},            // rank 25 of the first bucket's 50, from 0
		{0.7, 0.0015},             // rank 70: half way through (1, 2]
		{0.99, 0.004},             // rank 99: the top of (2, 4]
		{0.999, 0.004},            // rank 99.9: in +Inf, the last finite bound
		{0.95, 0.002 + 0.002*5/9}, // rank 95: 5 of the 9 in (2, 4]
	} {
		if got := h.Quantile(c.q); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("q %.3f: %g, want %g", c.q, got, c.want)
		}
	}
	if got := (Buckets{{0.001, 0}, {math.Inf(1), 0}}).Quantile(0.5); !math.IsNaN(got) {
		t.Errorf("no observations: %g, want NaN", got)
	}
	if sum := h.Add(h); sum[3].Count != 200 || sum[1].Count != 180 {
		t.Errorf("added: %v", sum)
	}
	if st := syncTimes(h); st == nil || st.N != 100 || math.Abs(st.P50-1) > 1e-9 || math.Abs(st.P99-4) > 1e-9 {
		t.Errorf("sync times %+v, want 100 commits, p50 1 ms, p99 4 ms", st)
	}
}
