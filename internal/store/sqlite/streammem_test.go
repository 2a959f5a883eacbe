package sqlite

import (
	"fmt"
	"runtime"
	"testing"
)

// BenchmarkStreamIndexBytes reports the memory the streams' index of positions takes per
// kept message: the recovery window's messages (120 a user, as two minutes at 4,000 msg/s
// to 4,000 users) taken in queue order, then the oldest half of each user's pruned as
// PruneStreams does, the entries and the users' streams counted.
func BenchmarkStreamIndexBytes(b *testing.B) {
	const users, per = 4000, 120
	ids := make([]string, users)
	for i := range ids {
		ids[i] = fmt.Sprintf("user-%d", i)
	}
	var kept, pruned float64
	for range b.N {
		var before, full, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		t := &streamTable{m: map[string]*userStream{}}
		seq := int64(0)
		for o := int64(1); o <= per; o++ {
			for _, id := range ids {
				seq++
				u := t.m[id]
				if u == nil {
					u = &userStream{}
					t.m[id] = u
				}
				u.top = o
				u.hold(o, seq, false)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&full)
		for _, u := range t.m {
			for o := int64(1); o <= per/2; o++ {
				u.forgetSeq(u.kept[0])
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		kept = float64(full.HeapAlloc-before.HeapAlloc) / (users * per)
		pruned = float64(after.HeapAlloc-before.HeapAlloc) / (users * per / 2)
		runtime.KeepAlive(t)
	}
	b.ReportMetric(kept, "B/kept-msg")
	b.ReportMetric(pruned, "B/kept-msg-after-prune")
}
