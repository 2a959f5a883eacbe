package bench

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// retentionFlags are the serve flags that set every retention to d, among those bin
// knows (an older build may lack some): the log's, the outbox's and the closed
// connections', and the offline users' too if users is set (otherwise users are kept, as
// by default, for a year).
func retentionFlags(bin string, d time.Duration, users bool) []string {
	known := ServeFlags(bin)
	var args []string
	flags := []string{"log-retention", "outbox-retention", "tombstone-retention"}
	if users {
		flags = append(flags, "user-retention")
	}
	for _, f := range flags {
		if known[f] {
			args = append(args, "--"+f, d.String())
		}
	}
	return args
}

// Footprint is what a server holds at one moment: its heap after a collection, its RSS,
// its store on disk, the users its memory image holds.
type Footprint struct {
	HeapMiB    float64 `json:"heap_mib"`
	RSSMiB     float64 `json:"rss_mib"`
	StoreMiB   float64 `json:"store_mib"`
	WALMiB     float64 `json:"wal_mib"`
	ImageUsers float64 `json:"image_users"`
}

// footprint collects garbage, then reads the server's heap (go_memstats_heap_alloc_bytes),
// RSS, store files and image gauge.
func footprint(ctx context.Context, t *Target) Footprint {
	t.CollectGarbage(ctx)
	heap, _ := t.Metric(ctx, "go_memstats_heap_alloc_bytes")
	rss, _ := t.RSS()
	store, wal := t.StoreBytes()
	image, ok := t.Metric(ctx, "wspresence_image_users")
	if !ok {
		image = -1
	}
	return Footprint{HeapMiB: heap / (1 << 20), RSSMiB: float64(rss) / (1 << 20), StoreMiB: float64(store) / (1 << 20),
		WALMiB: float64(wal) / (1 << 20), ImageUsers: image}
}

// UsersPoint is the users scenario at one number of distinct users, each having visited once
// (connected, then left), all offline.
type UsersPoint struct {
	Users int `json:"users"`
	// VisitsPerS is the rate the visits of this step ran at; Errors the failed ones.
	VisitsPerS float64 `json:"visits_per_s"`
	Errors     int     `json:"errors"`
	// Offline is the footprint once every user is offline and the retentions passed;
	// Restarted the same after a restart of the server on that store.
	Offline   Footprint `json:"offline"`
	Restarted Footprint `json:"restarted"`
	// StartSeconds is how long the restart took, from the process's start until /healthz
	// answered 200.
	StartSeconds float64 `json:"start_seconds"`
	// WALPeakMiB is the largest WAL file sampled (every 20 ms) while the delivery scenario
	// ran at saturation on this store (DeliveryPerS delivered of SaturationRate offered).
	WALPeakMiB     float64 `json:"wal_peak_mib"`
	SaturationRate float64 `json:"saturation_offered_per_s"`
	DeliveryPerS   float64 `json:"saturation_delivered_per_s"`
}

// UsersResult is the users scenario: a server started unpinned with every retention at
// Retention, visited by ever more distinct users.
type UsersResult struct {
	Retention   time.Duration `json:"retention_ns"`
	Concurrency int           `json:"concurrency"`
	Points      []UsersPoint  `json:"points"`
}

// visit has n distinct users (prefix-from … prefix-(from+n-1)) connect once and leave, from
// concurrency clients at once; it returns the visits per second and the failures.
func visit(ctx context.Context, t *Target, prefix string, from, n, concurrency int) (float64, int) {
	var next, errs atomic.Int64
	next.Store(int64(from) - 1)
	last := int64(from + n - 1)
	start := time.Now()
	var wg sync.WaitGroup
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := next.Add(1)
				if i > last {
					return
				}
				dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				c, _, err := websocket.Dial(dctx, t.VisitURL(fmt.Sprintf("%s-%d", prefix, i)), nil)
				cancel()
				if err != nil {
					errs.Add(1)
					continue
				}
				c.CloseNow()
			}
		}()
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds(), int(errs.Load())
}

// awaitOffline waits until the server holds no connection, no user is online and the image
// holds at most a few users (grace and retentions passed), at most limit.
func awaitOffline(ctx context.Context, t *Target, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		conns, _ := t.Metric(ctx, "wspresence_connections")
		online, _ := t.Metric(ctx, "wspresence_online_users")
		image, ok := t.Metric(ctx, "wspresence_image_users")
		if conns == 0 && online == 0 && (!ok || image <= 100) {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// Users runs the users scenario: for each size in sizes (ascending), as many distinct users
// in all have visited once; then, everyone offline and the retentions passed, the
// footprint; the delivery scenario at saturation on that store (its WAL sampled); a
// restart, timed, and the footprint after it.
func Users(ctx context.Context, bin string, sizes []int, concurrency int, p Profile, log *slog.Logger) (UsersResult, error) {
	res := UsersResult{Retention: time.Second, Concurrency: concurrency}
	dir, err := os.MkdirTemp("", "wspresence-bench-users-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	t, err := StartWspresence(bin, dir, "", retentionFlags(bin, res.Retention, false)...)
	if err != nil {
		return res, err
	}
	defer t.Stop()
	done := 0
	for _, n := range sizes {
		log.Info("users: visits", "from", done, "to", n, "concurrency", concurrency)
		rate, errs := visit(ctx, t, "visitor", done, n-done, concurrency)
		done = n
		pt := UsersPoint{Users: n, VisitsPerS: rate, Errors: errs}
		// Everyone offline, then the retentions and a prune interval (a tenth of them) passed.
		awaitOffline(ctx, t, 2*time.Minute)
		time.Sleep(3 * res.Retention)
		pt.Offline = footprint(ctx, t)
		log.Info("users: offline", "users", n, "footprint", pt.Offline)
		// The saturating delivery scenario on this store, its WAL sampled.
		fleet := OpenFleet(ctx, t, p.Users, p.Conns, 2000, fmt.Sprintf("sat%d", n))
		pt.Errors += fleet.Errors()
		rate = p.DeliveryRates[len(p.DeliveryRates)-1]
		stopWAL := sampleWAL(t)
		d := fleet.Deliver(ctx, t, rate, p.PhaseDuration, p.Batch)
		pt.WALPeakMiB = float64(stopWAL()) / (1 << 20)
		pt.SaturationRate, pt.DeliveryPerS = rate, d.Delivered
		pt.Errors += d.Errors
		fleet.Close()
		awaitOffline(ctx, t, time.Minute)
		time.Sleep(3 * res.Retention)
		if err := t.Restart(); err != nil {
			return res, fmt.Errorf("restart at %d users: %w", n, err)
		}
		pt.StartSeconds = t.Ready.Seconds()
		pt.Restarted = footprint(ctx, t)
		log.Info("users: restarted", "users", n, "start", t.Ready, "footprint", pt.Restarted, "wal_peak_mib", pt.WALPeakMiB)
		res.Points = append(res.Points, pt)
	}
	return res, nil
}

// sampleWAL samples the size of t's WAL file every 20 ms until the returned function is
// called, which returns the largest seen.
func sampleWAL(t *Target) func() int64 {
	var peak atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if _, wal := t.StoreBytes(); wal > peak.Load() {
				peak.Store(wal)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	return func() int64 { close(stop); <-done; return peak.Load() }
}

// ChurnSample is the footprint at one moment of the churn scenario.
type ChurnSample struct {
	AtSeconds float64 `json:"at_s"`
	Footprint
}

// ChurnResult is the churn scenario: distinct visitors arrive at Rate per second, each
// staying Stay, for Duration, on a server with every retention at Retention, the offline
// users' included (so what each visit leaves, its user's row too, goes once they pass).
type ChurnResult struct {
	Rate      float64       `json:"visitors_per_s"`
	Stay      time.Duration `json:"stay_ns"`
	Duration  time.Duration `json:"duration_ns"`
	Retention time.Duration `json:"retention_ns"`
	Visits    int           `json:"visits"`
	Errors    int           `json:"errors"`
	Samples   []ChurnSample `json:"samples"`
	// Settled is the time from which the retentions have passed (the grace, the retentions
	// and a prune interval): the slopes are fitted over the samples from then on.
	Settled       float64 `json:"settled_s"`
	HeapSlope     float64 `json:"heap_slope_kib_per_min"`
	StoreSlope    float64 `json:"store_slope_kib_per_min"`
	DatabaseSlope float64 `json:"database_slope_kib_per_min"`
}

// Churn runs the churn scenario on a fresh server (unpinned) with every retention at
// retention (the offline users' too), sampling its footprint every sample.
func Churn(ctx context.Context, bin string, rate float64, stay, dur, retention, sample time.Duration, log *slog.Logger) (ChurnResult, error) {
	res := ChurnResult{Rate: rate, Stay: stay, Duration: dur, Retention: retention}
	dir, err := os.MkdirTemp("", "wspresence-bench-churn-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	t, err := StartWspresence(bin, dir, "", retentionFlags(bin, retention, true)...)
	if err != nil {
		return res, err
	}
	defer t.Stop()
	log.Info("churn", "rate", rate, "stay", stay, "duration", dur, "retention", retention)
	start := time.Now()
	var errs atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the visitors
		defer wg.Done()
		n := int(rate * dur.Seconds())
		res.Visits = n
		openLoop(ctx, n, rate, func(i int, _ time.Time) {
			user := fmt.Sprintf("churn-%d", i)
			dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			c, _, err := websocket.Dial(dctx, t.VisitURL(user), nil)
			cancel()
			if err != nil {
				errs.Add(1)
				return
			}
			time.Sleep(stay)
			c.CloseNow()
		})
	}()
	for at := time.Duration(0); at <= dur && ctx.Err() == nil; at += sample {
		if d := time.Until(start.Add(at)); d > 0 {
			time.Sleep(d)
		}
		res.Samples = append(res.Samples, ChurnSample{AtSeconds: time.Since(start).Seconds(), Footprint: footprint(ctx, t)})
	}
	wg.Wait()
	res.Errors = int(errs.Load())
	// Retentions passed: the stay, the grace (1 s), the retention, a prune interval (a tenth
	// of it) and a second to spare.
	res.Settled = (stay + time.Second + retention + retention/10 + time.Second).Seconds()
	var at, heap, store, db []float64
	for _, s := range res.Samples {
		if s.AtSeconds >= res.Settled {
			at = append(at, s.AtSeconds/60)
			heap = append(heap, s.HeapMiB*1024)
			store = append(store, s.StoreMiB*1024)
			db = append(db, (s.StoreMiB-s.WALMiB)*1024)
		}
	}
	res.HeapSlope, res.StoreSlope, res.DatabaseSlope = slope(at, heap), slope(at, store), slope(at, db)
	return res, nil
}

// slope is the least-squares slope of y against x (0 with fewer than two points).
func slope(x, y []float64) float64 {
	n := float64(len(x))
	if n < 2 {
		return 0
	}
	var sx, sy, sxx, sxy float64
	for i := range x {
		sx, sy, sxx, sxy = sx+x[i], sy+y[i], sxx+x[i]*x[i], sxy+x[i]*y[i]
	}
	den := n*sxx - sx*sx
	if den == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / den
}
