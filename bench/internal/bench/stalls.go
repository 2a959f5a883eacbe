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

// DiskTimes is the disk alone: a diskProbe's fsync times over a run, and how many took
// longer than stallBound (Over, PerSecond of them a second).
type DiskTimes struct {
	Latency
	Over      int     `json:"over_10ms"`
	PerSecond float64 `json:"over_10ms_per_second"`
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
	done  chan []time.Duration
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
	p := &diskProbe{stop: make(chan struct{}), done: make(chan []time.Duration, 1), start: time.Now()}
	go func() {
		times := p.run(f)
		f.Close()
		os.RemoveAll(d)
		p.done <- times
	}()
	return p
}

// run writes and syncs f until stopped (or until a write fails) and returns the syncs' times.
func (p *diskProbe) run(f *os.File) []time.Duration {
	buf := make([]byte, diskProbeBytes)
	var times []time.Duration
	for off := int64(0); ; off = (off + diskProbeBytes) % (4 << 20) {
		select {
		case <-p.stop:
			return times
		case <-time.After(diskProbeGap):
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			return times
		}
		t := time.Now()
		if err := f.Sync(); err != nil {
			return times
		}
		times = append(times, time.Since(t))
	}
}

// finish stops the probe and returns its sync times and how long it ran (nil, 0 for a nil
// probe).
func (p *diskProbe) finish() ([]time.Duration, float64) {
	if p == nil {
		return nil, 0
	}
	close(p.stop)
	return <-p.done, time.Since(p.start).Seconds()
}

// diskTimes summarizes a probe's sync times over wall seconds (nil when there are none).
func diskTimes(times []time.Duration, wall float64) *DiskTimes {
	if len(times) == 0 || wall <= 0 {
		return nil
	}
	over := 0
	for _, d := range times {
		if d.Seconds() > stallBound {
			over++
		}
	}
	return &DiskTimes{Latency: summarize(times), Over: over, PerSecond: float64(over) / wall}
}
