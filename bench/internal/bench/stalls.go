package bench

import (
	"math"
	"os"
	"path/filepath"
	"time"
)

// Stalls: what makes a POST /messages wait long. A request waits for its group commit, whose
// fsync the disk may hold for tens of milliseconds (every commit behind it waits too), and
// for the CPU once answered; on one core a stall of S ms leaves about rate×S requests queued,
// and they drain at what the core has to spare. The publishers scenario counts the long
// waits of both kinds on the server, and the disk's own stalls beside the baseline's passes
// (which write nothing): the machine's floor under the POST latency, measured in the same
// run.

// stallBound is the wait counted as a stall: a request arriving then waits at least as long
// as a POST p99 bound of a few milliseconds allows.
const stallBound = 0.010

// Over counts the observations of h above the smallest of its bounds at or above threshold
// (in the unit of the bounds), and returns that bound; ok is false when h has no such finite
// bound.
func (h Buckets) Over(threshold float64) (n, bound float64, ok bool) {
	if len(h) == 0 {
		return 0, 0, false
	}
	total := h[len(h)-1].Count
	for _, b := range h {
		if b.LE >= threshold && !math.IsInf(b.LE, 1) {
			return total - b.Count, b.LE, true
		}
	}
	return 0, 0, false
}

// Stalls counts a server's waits above a bound over a run: of its N observations, Over took
// longer than OverMS milliseconds, PerSecond of them a second of the run.
type Stalls struct {
	N         int     `json:"n"`
	Over      int     `json:"over"`
	OverMS    float64 `json:"over_ms"`
	PerSecond float64 `json:"per_second"`
}

// stalls counts the observations of h above stallBound over wall seconds (nil when h has
// none, or no bound at or above stallBound).
func stalls(h Buckets, wall float64) *Stalls {
	if len(h) == 0 || h[len(h)-1].Count <= 0 || wall <= 0 {
		return nil
	}
	over, bound, ok := h.Over(stallBound)
	if !ok {
		return nil
	}
	return &Stalls{N: int(h[len(h)-1].Count), Over: int(over), OverMS: bound * 1000, PerSecond: over / wall}
}

// schedHistogram is the Go runtime's histogram, in the server's /metrics, of how long its
// goroutines waited, runnable, for a CPU.
const schedHistogram = "go_sched_latencies_seconds"

// DiskTimes is the disk alone: a diskProbe's fsync times over a run, how many took longer
// than stallBound (Over, PerSecond of them a second), and the floor the disk puts under a
// durable server's POST p99 (DurableWait).
type DiskTimes struct {
	Latency
	Over      int     `json:"over_10ms"`
	PerSecond float64 `json:"over_10ms_per_second"`
	// DurableWait is the p99, over arrivals at uniformly random times of the probe's run,
	// of the least wait for a sync that starts after the arrival: the rest of the sync in
	// progress (if any) and the whole next one. A server that answers only once a request
	// is synced, one sync at a time (as SQLite's writer does), waits at least that long
	// for its commit, before any CPU of its own.
	DurableWait float64 `json:"durable_wait_p99_ms"`
	// InProgress is the p99 of the rest of the sync in progress alone: a floor even for a
	// server that would start a sync of its own at once, since the disk stalls as a whole
	// (two files synced side by side stall together).
	InProgress float64 `json:"in_progress_p99_ms"`
}

// diskSync is one of the probe's syncs: when it started (since the probe's start) and how
// long it took.
type diskSync struct {
	at, took time.Duration
}

// diskProbeBytes and diskProbeGap shape the probe's writes as the store's group commits at
// 4,000 messages a second: a few pages, then an fsync, every 2 ms or so.
const (
	diskProbeBytes = 6 * 4096
	diskProbeGap   = 2 * time.Millisecond
)

// diskProbe writes diskProbeBytes to a file and syncs it, then rests diskProbeGap, until
// stopped, timing each sync: the disk's own stalls, with nothing else of this run writing.
type diskProbe struct {
	stop  chan struct{}
	done  chan []diskSync
	start time.Time
}

// startDiskProbe starts a probe on a file of its own in dir (nil if it cannot create one).
func startDiskProbe(dir string) *diskProbe {
	d, err := os.MkdirTemp(dir, "wspresence-bench-disk-")
	if err != nil {
		return nil
	}
	f, err := os.Create(filepath.Join(d, "probe"))
	if err != nil {
		os.RemoveAll(d)
		return nil
	}
	p := &diskProbe{stop: make(chan struct{}), done: make(chan []diskSync, 1), start: time.Now()}
	go func() {
		syncs := p.run(f)
		f.Close()
		os.RemoveAll(d)
		p.done <- syncs
	}()
	return p
}

// run writes and syncs f until stopped (or until a write fails) and returns the syncs.
func (p *diskProbe) run(f *os.File) []diskSync {
	buf := make([]byte, diskProbeBytes)
	var syncs []diskSync
	for off := int64(0); ; off = (off + diskProbeBytes) % (4 << 20) {
		select {
		case <-p.stop:
			return syncs
		case <-time.After(diskProbeGap):
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			return syncs
		}
		t := time.Now()
		if err := f.Sync(); err != nil {
			return syncs
		}
		syncs = append(syncs, diskSync{at: t.Sub(p.start), took: time.Since(t)})
	}
}

// finish stops the probe and returns its syncs and how long it ran (nil, 0 for a nil
// probe).
func (p *diskProbe) finish() ([]diskSync, float64) {
	if p == nil {
		return nil, 0
	}
	close(p.stop)
	return <-p.done, time.Since(p.start).Seconds()
}

// diskTimes summarizes the syncs of one or more probes (one per pass) over wall seconds in
// all (nil when there are none).
func diskTimes(passes [][]diskSync, wall float64) *DiskTimes {
	var times []time.Duration
	over := 0
	for _, syncs := range passes {
		for _, s := range syncs {
			times = append(times, s.took)
			if s.took.Seconds() > stallBound {
				over++
			}
		}
	}
	if len(times) == 0 || wall <= 0 {
		return nil
	}
	return &DiskTimes{Latency: summarize(times), Over: over, PerSecond: float64(over) / wall,
		DurableWait: waitQuantile(passes, 0.99, true), InProgress: waitQuantile(passes, 0.99, false)}
}

// waitQuantile is the q-quantile, in milliseconds, of the wait of an arrival at a uniformly
// random time between the first sync's start and the last one's of each pass: the rest of
// the sync in progress, plus the whole next sync when next is set (an arrival between two
// syncs waits the next whole one then, and nothing when next is not set). The wait is
// piecewise linear in the arrival time, so the time during which it exceeds w is summed
// exactly, and w found by bisection.
func waitQuantile(passes [][]diskSync, q float64, next bool) float64 {
	var total, hi time.Duration
	for _, syncs := range passes {
		if len(syncs) > 1 {
			total += syncs[len(syncs)-1].at - syncs[0].at
		}
		for _, s := range syncs {
			hi += s.took
		}
	}
	if total <= 0 {
		return 0
	}
	above := func(w time.Duration) time.Duration {
		var sum time.Duration
		for _, syncs := range passes {
			for i := 0; i+1 < len(syncs); i++ {
				cur, nxt := syncs[i], syncs[i+1]
				var then time.Duration // the wait at the sync's end
				if next {
					then = nxt.took
				}
				// During cur the wait falls from then+cur.took to then; above w for
				// then+cur.took-w of it, clipped to [0, cur.took].
				sum += min(max(then+cur.took-w, 0), cur.took)
				if gap := nxt.at - cur.at - cur.took; gap > 0 && then > w {
					sum += gap
				}
			}
		}
		return sum
	}
	want := time.Duration((1 - q) * float64(total))
	lo := time.Duration(0)
	for hi-lo > time.Microsecond {
		mid := (lo + hi) / 2
		if above(mid) > want {
			lo = mid
		} else {
			hi = mid
		}
	}
	return float64(hi.Microseconds()) / 1000
}
