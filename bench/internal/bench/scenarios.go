package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// Latency summarises samples, in milliseconds.
type Latency struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50_ms"`
	P99  float64 `json:"p99_ms"`
	P999 float64 `json:"p999_ms"`
	Max  float64 `json:"max_ms,omitempty"`
}

func summarize(samples []time.Duration) Latency {
	if len(samples) == 0 {
		return Latency{}
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	at := func(q float64) float64 {
		i := int(q * float64(len(samples)-1))
		return float64(samples[i].Microseconds()) / 1000
	}
	return Latency{N: len(samples), P50: at(0.50), P99: at(0.99), P999: at(0.999), Max: at(1)}
}

// recorder collects latencies from many goroutines.
type recorder struct {
	mu      sync.Mutex
	samples []time.Duration
}

func (r *recorder) add(d time.Duration) { r.mu.Lock(); r.samples = append(r.samples, d); r.mu.Unlock() }
func (r *recorder) take() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.samples
	r.samples = nil
	return s
}

// openLoop calls fn(i) for i in [0, n) at rate per second, each in its own goroutine, on
// schedule whatever the previous calls do, and waits for all of them.
func openLoop(ctx context.Context, n int, rate float64, fn func(i int, due time.Time)) {
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < n && ctx.Err() == nil; i++ {
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func() { defer wg.Done(); fn(i, due) }()
	}
	wg.Wait()
}

// ConnectResult is scenario 1.
type ConnectResult struct {
	Offered    float64 `json:"offered_per_s"`
	Achieved   float64 `json:"connects_per_s"`
	Latency    Latency `json:"latency"`
	Errors     int     `json:"errors"`
	Connection int     `json:"connections"`
}

// Connect opens n connections of distinct users at rate per second (open loop); latency
// counts from each connection's scheduled time, so queueing shows.
func Connect(ctx context.Context, t *Target, n int, rate float64, prefix string) ConnectResult {
	var rec recorder
	var errs atomic.Int64
	conns := make([]*websocket.Conn, n)
	urls := make([]string, n)
	for i := range urls {
		urls[i] = t.WebSocketURL(fmt.Sprintf("%s-%d", prefix, i))
	}
	start := time.Now()
	var last atomic.Int64
	openLoop(ctx, n, rate, func(i int, due time.Time) {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(dctx, urls[i], nil)
		if err != nil {
			errs.Add(1)
			return
		}
		now := time.Now()
		rec.add(now.Sub(due))
		last.Store(now.UnixNano())
		conns[i] = c
		go func() { _, _, _ = c.Read(context.Background()) }()
	})
	elapsed := time.Duration(last.Load() - start.UnixNano())
	ok := n - int(errs.Load())
	for _, c := range conns {
		if c != nil {
			c.CloseNow()
		}
	}
	res := ConnectResult{Offered: rate, Latency: summarize(rec.take()), Errors: int(errs.Load()), Connection: ok}
	if elapsed > 0 {
		res.Achieved = float64(ok) / elapsed.Seconds()
	}
	return res
}

// Fleet is a set of idle connections that record each frame's latency (the frame body
// carries its send time).
type Fleet struct {
	conns    []*websocket.Conn
	Users    []string
	perUser  int
	rec      recorder
	received atomic.Int64
	errors   atomic.Int64
}

// OpenFleet opens conns connections spread over users users, at most rate per second.
func OpenFleet(ctx context.Context, t *Target, users, conns int, rate float64, prefix string) *Fleet {
	f := &Fleet{conns: make([]*websocket.Conn, conns), perUser: conns / users}
	for u := range users {
		f.Users = append(f.Users, fmt.Sprintf("%s-%d", prefix, u))
	}
	var mu sync.Mutex
	openLoop(ctx, conns, rate, func(i int, _ time.Time) {
		dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(dctx, t.WebSocketURL(f.Users[i%users]), nil)
		if err != nil {
			f.errors.Add(1)
			return
		}
		c.SetReadLimit(1 << 20)
		mu.Lock()
		f.conns[i] = c
		mu.Unlock()
		go f.read(c)
	})
	return f
}

func (f *Fleet) read(c *websocket.Conn) {
	for {
		_, data, err := c.Read(context.Background())
		if err != nil {
			return
		}
		now := time.Now().UnixNano()
		if i := strings.LastIndexByte(string(data), ':'); i >= 0 {
			if sent, err := strconv.ParseInt(string(data[i+1:]), 10, 64); err == nil {
				f.rec.add(time.Duration(now - sent))
			}
		}
		f.received.Add(1)
	}
}

// Close closes every connection.
func (f *Fleet) Close() {
	for _, c := range f.conns {
		if c != nil {
			c.CloseNow()
		}
	}
}

// Errors counts failed dials.
func (f *Fleet) Errors() int { return int(f.errors.Load()) }

// DeliveryPoint is one offered rate of scenario 2.
type DeliveryPoint struct {
	Offered   float64 `json:"offered_msgs_per_s"`
	Delivered float64 `json:"delivered_per_s"`
	Latency   Latency `json:"enqueue_to_receipt"`
	Expected  int64   `json:"frames_expected"`
	Received  int64   `json:"frames_received"`
	// Backlog is the frames not received 10 s after the phase: still queued (durable) when
	// the rate is past what the server sustains.
	Backlog int64 `json:"backlog"`
	Errors  int   `json:"errors"`
	// CPU is the server's CPU time over the phase (sending, then waiting for the frames).
	CPU CPUCost `json:"server_cpu"`
	// ClientCores is the load generator's CPU time over the phase / its wall time.
	ClientCores float64 `json:"client_cores"`
}

// CPUCost is the server's CPU time over a scenario and what it cost per delivered message
// (a message counts once whatever its user's number of connections).
type CPUCost struct {
	Seconds float64 `json:"seconds"`
	// PerMessageUS is Seconds / messages delivered, in microseconds.
	PerMessageUS float64 `json:"per_message_us"`
	// CommitsPerMessage is the store's group commits over the scenario / messages
	// delivered (wspresence only): each costs an fsync and its pages whatever it holds.
	CommitsPerMessage float64 `json:"commits_per_message,omitempty"`
}

func cpuCost(seconds, commits float64, delivered int64) CPUCost {
	c := CPUCost{Seconds: seconds}
	if delivered > 0 {
		c.PerMessageUS = seconds / float64(delivered) * 1e6
		c.CommitsPerMessage = commits / float64(delivered)
	}
	return c
}

// Deliver enqueues messages at rate per second for dur (batches of batch messages per
// request, users in turn) and waits for the frames.
func (f *Fleet) Deliver(ctx context.Context, t *Target, rate float64, dur time.Duration, batch int) DeliveryPoint {
	defer pauseGC()()
	f.rec.take()
	f.received.Store(0)
	requests := int(rate * dur.Seconds() / float64(batch))
	var errs atomic.Int64
	var next atomic.Int64
	start := time.Now()
	commits := t.Commits(ctx) // before the CPU meter starts, so the scrape is not counted
	cpu := t.meterCPU()
	self := selfMeter()
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	openLoop(ctx, requests, rate/float64(batch), func(int, time.Time) {
		type msg struct {
			UserID string `json:"UserId"`
			Body   string `json:"Body"`
		}
		msgs := make([]msg, batch)
		now := strconv.FormatInt(time.Now().UnixNano(), 10)
		for j := range msgs {
			k := next.Add(1)
			msgs[j] = msg{UserID: f.Users[int(k)%len(f.Users)], Body: "m" + strconv.FormatInt(k, 10) + ":" + now}
		}
		body, _ := json.Marshal(msgs)
		if !push(ctx, client, t, body) {
			errs.Add(1)
		}
	})
	expected := next.Load() * int64(f.perUser)
	got := f.awaitFrames(expected)
	elapsed := time.Since(start)
	return DeliveryPoint{Offered: rate, Delivered: float64(got) / float64(f.perUser) / elapsed.Seconds(),
		Latency: summarize(f.rec.take()), Expected: expected, Received: got, Backlog: expected - min(got, expected), Errors: int(errs.Load()),
		CPU: cpuCost(cpu.stop(), t.Commits(ctx)-commits, got/int64(f.perUser)), ClientCores: self()}
}

// push posts body to the target's POST /messages and reports whether it was accepted (202).
func push(ctx context.Context, client *http.Client, t *Target, body []byte) bool {
	resp, err := client.Do(t.PushRequest(ctx, body))
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusAccepted
}

// awaitFrames waits up to 10 s for expected frames to arrive and returns how many did.
func (f *Fleet) awaitFrames(expected int64) int64 {
	deadline := time.Now().Add(10 * time.Second)
	for f.received.Load() < expected && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	return f.received.Load()
}

// PublishResult is the publishers scenario: one message per HTTP request, from a fixed
// pool of publishers, at a fixed rate, to a fleet of connections.
type PublishResult struct {
	Offered     float64 `json:"offered_msgs_per_s"`
	Publishers  int     `json:"publishers"`
	Connections int     `json:"connections"`
	Delivered   float64 `json:"delivered_per_s"`
	Receipt     Latency `json:"enqueue_to_receipt"`
	Post        Latency `json:"post_messages"`
	// Late is how late a publisher took each request's tick (from the tick's due time
	// until the request starts): the load generator's own delay, inside Post.
	Late     Latency `json:"tick_lateness"`
	Expected int64   `json:"frames_expected"`
	Received int64   `json:"frames_received"`
	Errors   int     `json:"errors"`
	// CPU is the server's CPU time over the run (publishing, then waiting for the frames).
	CPU CPUCost `json:"server_cpu"`
	// ClientCores is the load generator's CPU time over the run / its wall time: the cores
	// it kept busy (at most as many as it is confined to; near that, it paced the run).
	ClientCores float64 `json:"client_cores"`
	// Synced is the server's commits synced to disk over the run and how long they took
	// (wspresence only): the disk's share of the POST latency.
	Synced *SyncTimes `json:"commit_sync,omitempty"`
	// SyncStalls counts the synced commits over about 10 ms (wspresence only): every
	// request that arrives during one waits for it.
	SyncStalls *Stalls `json:"commit_sync_stalls,omitempty"`
	// CPUWaits counts the server's goroutines that waited over about 10 ms, runnable, for
	// the CPU (go_sched_latencies_seconds; wspresence only).
	CPUWaits *Stalls `json:"cpu_waits,omitempty"`
	// Disk is the disk alone, probed beside the baseline's passes (baseline only).
	Disk *DiskTimes `json:"disk_alone,omitempty"`
	// Passes, when the point pools several passes (PublishPasses), is each pass's own
	// figures, in the order they ran; the point's latencies are those of every sample of
	// every pass, its CPU and commits their sums over the messages of every pass.
	Passes []PublishResult `json:"passes,omitempty"`
}

// SyncTimes is how many commits the server synced to disk over a run and how long each
// took (its WAL pages and the fsync), from the histogram wspresence_store_commit_sync_seconds:
// p50 and p99 interpolated within its buckets (each 1.41 times the one below), as
// Prometheus's histogram_quantile does.
type SyncTimes struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
}

// syncHistogram is the server's histogram of its synced commits' times.
const syncHistogram = "wspresence_store_commit_sync_seconds"

// syncTimes summarizes the observations of h (nil when there are none).
func syncTimes(h Buckets) *SyncTimes {
	if len(h) == 0 || h[len(h)-1].Count <= 0 {
		return nil
	}
	return &SyncTimes{N: int(h[len(h)-1].Count), P50: h.Quantile(0.50) * 1000, P99: h.Quantile(0.99) * 1000}
}

// publishPass is one pass of the publishers scenario: its figures and what pooling needs.
type publishPass struct {
	res                 PublishResult
	receipt, post, late []time.Duration
	commits, wall       float64
	synced, sched       Buckets
	disk                []diskSync
	diskWall            float64
}

// Publish sends rate messages per second for dur, one message per POST, from publishers
// concurrent publishers taking the ticks of an open-loop schedule (a tick waits while every
// publisher is busy, so queueing shows in the POST latency, counted from the tick), and
// waits for the frames.
func (f *Fleet) Publish(ctx context.Context, t *Target, rate float64, dur time.Duration, publishers int) PublishResult {
	return f.publish(ctx, t, rate, dur, publishers).res
}

// PublishPasses runs passes passes of Publish at each of rates, interleaved (every rate in
// turn, then again), so that a minute of the machine's other load falls on every rate
// alike, and pools each rate's passes into one point: the latencies of all their samples,
// the CPU of all their messages.
func (f *Fleet) PublishPasses(ctx context.Context, t *Target, rates []float64, dur time.Duration, publishers, passes int) []PublishResult {
	runs := make([][]publishPass, len(rates))
	for range max(passes, 1) {
		for i, rate := range rates {
			runs[i] = append(runs[i], f.publish(ctx, t, rate, dur, publishers))
		}
	}
	out := make([]PublishResult, len(rates))
	for i, ps := range runs {
		if len(ps) == 1 {
			out[i] = ps[0].res
			continue
		}
		p := PublishResult{Offered: ps[0].res.Offered, Publishers: publishers, Connections: len(f.conns)}
		var receipt, post, late []time.Duration
		var cpu, commits, wall, clientCPU float64
		var synced, sched Buckets
		var disk [][]diskSync
		var diskWall float64
		for _, pass := range ps {
			synced, sched = synced.Add(pass.synced), sched.Add(pass.sched)
			disk, diskWall = append(disk, pass.disk), diskWall+pass.diskWall
			receipt, post = append(receipt, pass.receipt...), append(post, pass.post...)
			late = append(late, pass.late...)
			p.Expected += pass.res.Expected
			p.Received += pass.res.Received
			p.Errors += pass.res.Errors
			cpu += pass.res.CPU.Seconds
			commits += pass.commits
			wall += pass.wall
			clientCPU += pass.res.ClientCores * pass.wall
			p.Passes = append(p.Passes, pass.res)
		}
		p.Receipt, p.Post, p.Late = summarize(receipt), summarize(post), summarize(late)
		p.CPU = cpuCost(cpu, commits, p.Received/int64(f.perUser))
		p.Synced = syncTimes(synced)
		p.SyncStalls, p.CPUWaits, p.Disk = stalls(synced, wall), stalls(sched, wall), diskTimes(disk, diskWall)
		if wall > 0 {
			p.Delivered = float64(p.Received) / float64(f.perUser) / wall
			p.ClientCores = clientCPU / wall
		}
		out[i] = p
	}
	return out
}

func (f *Fleet) publish(ctx context.Context, t *Target, rate float64, dur time.Duration, publishers int) publishPass {
	defer pauseGC()()
	f.rec.take()
	f.received.Store(0)
	n := int(rate * dur.Seconds())
	ticks := make(chan time.Time, n)
	go func() {
		defer close(ticks)
		interval := time.Duration(float64(time.Second) / rate)
		start := time.Now()
		for i := 0; i < n && ctx.Err() == nil; i++ {
			due := start.Add(time.Duration(i) * interval)
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
			ticks <- due
		}
	}()
	var post, late recorder
	var errs, next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	commits := t.Commits(ctx) // before the CPU meter starts, so the scrapes are not counted
	synced := t.Histogram(ctx, syncHistogram)
	sched := t.Histogram(ctx, schedHistogram)
	var probe *diskProbe
	if t.baseline && !t.durable {
		probe = startDiskProbe("") // beside the baseline's pass, the disk has nothing else of this run to write
	}
	cpu := t.meterCPU()
	self := selfMeter()
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: publishers}}
	for range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for due := range ticks {
				late.add(time.Since(due))
				k := next.Add(1)
				body := fmt.Sprintf(`[{"UserId":%q,"Body":"p%d:%d"}]`, f.Users[int(k)%len(f.Users)], k, time.Now().UnixNano())
				if !push(ctx, client, t, []byte(body)) {
					errs.Add(1)
					continue
				}
				post.add(time.Since(due))
			}
		}()
	}
	wg.Wait()
	expected := next.Load() * int64(f.perUser)
	got := f.awaitFrames(expected)
	wall := time.Since(start).Seconds()
	disk, diskWall := probe.finish()
	seconds := cpu.stop()
	committed := float64(t.Commits(ctx) - commits)
	if synced != nil {
		synced = t.Histogram(ctx, syncHistogram).Since(synced)
	}
	if sched != nil {
		sched = t.Histogram(ctx, schedHistogram).Since(sched)
	}
	pass := publishPass{receipt: f.rec.take(), post: post.take(), late: late.take(), commits: committed, wall: wall,
		synced: synced, sched: sched, disk: disk, diskWall: diskWall}
	pass.res = PublishResult{Offered: rate, Publishers: publishers, Connections: len(f.conns),
		Delivered: float64(got) / float64(f.perUser) / wall,
		Receipt:   summarize(pass.receipt), Post: summarize(pass.post), Late: summarize(pass.late), Expected: expected, Received: got, Errors: int(errs.Load()),
		CPU: cpuCost(seconds, committed, got/int64(f.perUser)), ClientCores: self(), Synced: syncTimes(synced),
		SyncStalls: stalls(synced, wall), CPUWaits: stalls(sched, wall), Disk: diskTimes([][]diskSync{disk}, diskWall)}
	return pass
}

// Lag measures append→view visible: from a connection's upgrade (its open is durable by
// then) until the status query reports the user online.
func Lag(ctx context.Context, t *Target, samples int, prefix string) (Latency, int) {
	var lat []time.Duration
	errors := 0
	client := &http.Client{Timeout: 10 * time.Second}
	for i := range samples {
		user := fmt.Sprintf("%s-%d", prefix, i)
		url := t.WebSocketURL(user)
		c, _, err := websocket.Dial(ctx, url, nil)
		if err != nil {
			errors++
			continue
		}
		start := time.Now()
		for {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, t.OnlineURL([]string{user}), nil)
			req.Header = t.Header()
			resp, err := client.Do(req)
			if err != nil {
				errors++
				break
			}
			var st []struct{ IsOnline bool }
			_ = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if len(st) == 1 && st[0].IsOnline {
				lat = append(lat, time.Since(start))
				break
			}
			if time.Since(start) > 5*time.Second {
				errors++
				break
			}
		}
		c.CloseNow()
	}
	return summarize(lat), errors
}

// RESTResult is scenario 4 at one request shape.
type RESTResult struct {
	IDs     int     `json:"ids"`
	Rate    float64 `json:"requests_per_s"`
	Latency Latency `json:"latency"`
	Errors  int     `json:"errors"`
}

// REST runs GET status queries of ids at rate per second for dur with vegeta.
func REST(t *Target, ids []string, rate int, dur time.Duration) RESTResult {
	targeter := vegeta.NewStaticTargeter(vegeta.Target{Method: http.MethodGet, URL: t.OnlineURL(ids), Header: t.Header()})
	attacker := vegeta.NewAttacker(vegeta.KeepAlive(true))
	var m vegeta.Metrics
	var lat []time.Duration
	for res := range attacker.Attack(targeter, vegeta.Rate{Freq: rate, Per: time.Second}, dur, "rest") {
		m.Add(res)
		if res.Error == "" && res.Code == http.StatusOK {
			lat = append(lat, res.Latency)
		}
	}
	m.Close()
	return RESTResult{IDs: len(ids), Rate: float64(rate), Latency: summarize(lat), Errors: int(m.Requests) - len(lat)}
}

// MemoryResult is scenario 5 at one N.
type MemoryResult struct {
	N            int     `json:"connections"`
	BytesPerConn float64 `json:"bytes_per_connection"`
	RSSBeforeMiB float64 `json:"rss_before_mib"`
	RSSAfterMiB  float64 `json:"rss_after_mib"`
	Errors       int     `json:"errors"`
}

// Memory opens n idle connections and reports (RSS at n − RSS at 0)/n after GC.
func Memory(ctx context.Context, t *Target, n int, prefix string, heapDir string) (MemoryResult, string) {
	t.CollectGarbage(ctx)
	before, _ := t.RSS()
	f := OpenFleet(ctx, t, n, n, 2000, prefix)
	time.Sleep(time.Second)
	t.CollectGarbage(ctx)
	time.Sleep(200 * time.Millisecond)
	after, _ := t.RSS()
	heap, _ := t.IdleHeap(ctx, heapDir)
	f.Close()
	return MemoryResult{N: n, BytesPerConn: float64(after-before) / float64(n),
		RSSBeforeMiB: float64(before) / (1 << 20), RSSAfterMiB: float64(after) / (1 << 20), Errors: f.Errors()}, heap
}
