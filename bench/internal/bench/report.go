package bench

import (
	"fmt"
	"image/color"
	"os"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

type row struct {
	metric      string
	ws, base    float64
	unit        string
	target      string
	lowerBetter bool
}

func (r *Results) rows() []row {
	w, b := r.Wspresence, r.Baseline
	maxConnect := func(s Side) (best ConnectResult) {
		for _, c := range s.Connect {
			if c.Achieved > best.Achieved {
				best = c
			}
		}
		return best
	}
	first := func(s Side) ConnectResult {
		if len(s.Connect) == 0 {
			return ConnectResult{}
		}
		return s.Connect[0]
	}
	maxDelivered := func(s Side) float64 {
		m := 0.0
		for _, d := range s.Delivery {
			m = max(m, d.Delivered)
		}
		return m
	}
	atKnee := func(s Side) Latency {
		k := kneeRate(s.Delivery)
		for _, d := range s.Delivery {
			if d.Offered == k {
				return d.Latency
			}
		}
		return Latency{}
	}
	pubAt := func(s Side, i int) PublishResult { return pick(s.Publish, i) }
	lastMem := func(s Side) float64 {
		if len(s.Memory) == 0 {
			return 0
		}
		return s.Memory[len(s.Memory)-1].BytesPerConn / 1024
	}
	rows := []row{
		{"connects/s at saturation", maxConnect(w).Achieved, maxConnect(b).Achieved, "/s", "≥ 0.7× baseline", false},
		{fmt.Sprintf("connect latency p50 at %.0f/s", first(w).Offered), first(w).Latency.P50, first(b).Latency.P50, "ms", "", true},
		{fmt.Sprintf("connect latency p99 at %.0f/s", first(w).Offered), first(w).Latency.P99, first(b).Latency.P99, "ms", "", true},
		{"messages delivered/s (best offered rate)", maxDelivered(w), maxDelivered(b), "/s", "≥ 0.5× baseline", false},
		{"knee (highest rate delivered in full)", kneeRate(w.Delivery), kneeRate(b.Delivery), "/s", "", false},
		{"enqueue→receipt p50 at the knee", atKnee(w).P50, atKnee(b).P50, "ms", "", true},
		{"enqueue→receipt p99 at the knee", atKnee(w).P99, atKnee(b).P99, "ms", "≤ 10 ms", true},
		{"enqueue→receipt p99.9 at the knee", atKnee(w).P999, atKnee(b).P999, "ms", "", true},
		{"projection lag p50, idle", w.LagIdle.P50, b.LagIdle.P50, "ms", "", true},
		{"projection lag p99, idle", w.LagIdle.P99, b.LagIdle.P99, "ms", "≤ 1 ms", true},
		{"projection lag p99, half load", w.LagLoaded.P99, b.LagLoaded.P99, "ms", "≤ 1 ms", true},
		{fmt.Sprintf("REST p50, 1 id at %.0f/s", w.REST1.Rate), w.REST1.Latency.P50, b.REST1.Latency.P50, "ms", "", true},
		{fmt.Sprintf("REST p99, 1 id at %.0f/s", w.REST1.Rate), w.REST1.Latency.P99, b.REST1.Latency.P99, "ms", "≤ 1 ms", true},
		{fmt.Sprintf("REST p99, 100 ids at %.0f/s", w.REST100.Rate), w.REST100.Latency.P99, b.REST100.Latency.P99, "ms", "≤ 3 ms", true},
		{"RSS per idle connection (largest N)", lastMem(w), lastMem(b), "KB", "≤ 16 KB at 10,000", true},
	}
	for i, p := range w.Publish {
		bp := pubAt(b, i)
		rows = append(rows,
			row{fmt.Sprintf("server CPU per delivered message, 1 msg/request, %.0f msg/s", p.Offered), p.CPU.PerMessageUS, bp.CPU.PerMessageUS, "µs", "", true})
	}
	if n := len(w.Publish); n > 0 {
		p, bp := w.Publish[n-1], pubAt(b, n-1)
		rows = append(rows,
			row{fmt.Sprintf("enqueue→receipt p99, 1 msg/request, %d publishers, %d conns, %.0f msg/s", p.Publishers, p.Connections, p.Offered),
				p.Receipt.P99, bp.Receipt.P99, "ms", "≤ 10 ms", true},
			row{"POST /messages p99 (same run)", p.Post.P99, bp.Post.P99, "ms", "≤ 5 ms", true})
	}
	return rows
}

// Figures of a publishers pass, for passRange.
func receiptP99(p PublishResult) float64    { return p.Receipt.P99 }
func postP99(p PublishResult) float64       { return p.Post.P99 }
func cpuPerMessage(p PublishResult) float64 { return p.CPU.PerMessageUS }

// lateness is ", its ticks late p99 …" of p, or "" for results that did not time them,
// followed by the server's synced commits, when it reported them.
func lateness(p PublishResult) string {
	if p.Late.N == 0 {
		return ""
	}
	s := fmt.Sprintf(", its ticks late p99 %.2f ms", p.Late.P99)
	if p.Synced != nil {
		s += fmt.Sprintf("; %d commits synced, each p50 %.2f, p99 %.2f ms (WAL pages and fsync)", p.Synced.N, p.Synced.P50, p.Synced.P99)
	}
	if st := p.SyncStalls; st != nil {
		s += fmt.Sprintf(", %d over %.1f ms (%.2f a second)", st.Over, st.OverMS, st.PerSecond)
	}
	if w := p.CPUWaits; w != nil {
		s += fmt.Sprintf("; goroutines that waited for the CPU over %.1f ms: %d of %d (%.2f a second)", w.OverMS, w.Over, w.N, w.PerSecond)
	}
	if d := p.Disk; d != nil {
		s += fmt.Sprintf("; the disk alone beside it (%d KB and an fsync every %v): fsync p50 %.2f, p99 %.2f, p99.9 %.2f, max %.2f ms, %d over %.0f ms (%.2f a second)",
			diskProbeBytes>>10, diskProbeGap, d.P50, d.P99, d.P999, d.Max, d.Over, stallBound*1000, d.PerSecond)
		if d.DurableWait > 0 {
			s += fmt.Sprintf("; a durable answer's least wait on it, p99 over arrival times: %.2f ms (the rest of the sync in progress and the next whole one; the rest alone %.2f ms)",
				d.DurableWait, d.InProgress)
		}
	}
	return s
}

// passRange is " (passes lo–hi)" of fig over p's passes, or "" for a point of one pass.
func passRange(p PublishResult, fig func(PublishResult) float64) string {
	if len(p.Passes) < 2 {
		return ""
	}
	lo, hi := fig(p.Passes[0]), fig(p.Passes[0])
	for _, pass := range p.Passes[1:] {
		lo, hi = min(lo, fig(pass)), max(hi, fig(pass))
	}
	return fmt.Sprintf(" (passes %.3g–%.3g)", lo, hi)
}

// Markdown renders the report: the machine, the headline table, every point, the profile.
func (r *Results) Markdown(plotFile, resultsFile string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Benchmarks\n\nOne run of `make bench` (profile `%s`), %s. The server under test and the\n", r.Profile.Name, r.Date.Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "baseline (a minimal coder/websocket server: no auth, no store, frames pushed as they come)\n")
	fmt.Fprintf(&b, "ran in turn on one core (`taskset -c 0`: %v), the load generator (every thread, the whole side) on the others, through\n", r.Machine.Pinned)
	fmt.Fprintf(&b, "their public interfaces only. Ratios are wspresence / baseline; raw results: `%s`.\n\n", resultsFile)
	fmt.Fprintf(&b, "Machine: %d CPUs, %s, %s. Other work on the machine while each side ran (the machine is shared):\n", r.Machine.CPUs, r.Machine.Model, r.Machine.Go)
	fmt.Fprintf(&b, "%.2f cores busy on average beside wspresence and the load generator (load average %s at its end), %.2f beside the baseline (%s).\n",
		r.Wspresence.Load.OtherCores, r.Wspresence.Load.LoadAvg, r.Baseline.Load.OtherCores, r.Baseline.Load.LoadAvg)
	b.WriteString("Server CPU is the process's user + system time (`/proc/<pid>/stat`) over the scenario, sending\n")
	b.WriteString("and waiting for the frames, divided by the messages delivered.")
	if r.Profile.PubPasses > 1 {
		fmt.Fprintf(&b, " Each publishers point pools %d passes of %s at its rate, the rates\n", r.Profile.PubPasses, r.Profile.PhaseDuration)
		b.WriteString("interleaved: its latencies are those of every sample of every pass, its CPU that of all their\n")
		b.WriteString("messages; the range of each pass's own figure follows in brackets.")
	}
	b.WriteString("\n\n")
	b.WriteString("| metric | wspresence | baseline | ratio | target |\n|---|---|---|---|---|\n")
	for _, row := range r.rows() {
		ratio := "–"
		if row.base > 0 {
			ratio = fmt.Sprintf("%.2f", row.ws/row.base)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", row.metric, num(row.ws, row.unit), num(row.base, row.unit), ratio, row.target)
	}
	if rc := r.Wspresence.Recovery; rc != nil { // the baseline does not recover: the ratio is to live delivery
		fmt.Fprintf(&b, "| messages replayed/s, %d recovering clients reconnecting at once | %s | – | %.2f× live delivery | |\n",
			rc.Clients, num(rc.ReplayMsgsPerS, "/s"), rc.ReplayMsgsPerS/max(rc.LiveMsgsPerS, 1e-9))
		fmt.Fprintf(&b, "| live messages delivered/s to the same clients (same run) | %s | – | – | |\n", num(rc.LiveMsgsPerS, "/s"))
	}
	fmt.Fprintf(&b, "\n![delivery latency against offered rate](%s)\n\n## Every point\n\n", plotFile)
	b.WriteString("| scenario | offered | wspresence | baseline |\n|---|---|---|---|\n")
	for i, c := range r.Wspresence.Connect {
		bc := pick(r.Baseline.Connect, i)
		fmt.Fprintf(&b, "| connect | %.0f/s | %.0f/s, p50 %.2f ms, p99 %.2f ms, %d errors | %.0f/s, p50 %.2f ms, p99 %.2f ms |\n",
			c.Offered, c.Achieved, c.Latency.P50, c.Latency.P99, c.Errors, bc.Achieved, bc.Latency.P50, bc.Latency.P99)
	}
	for i, d := range r.Wspresence.Delivery {
		bd := pick(r.Baseline.Delivery, i)
		fmt.Fprintf(&b, "| delivery | %.0f msg/s | %.0f/s, p50 %.2f, p99 %.2f, p99.9 %.2f ms (%d/%d frames), CPU %.0f µs/msg, load generator %.2f cores | %.0f/s, p50 %.2f, p99 %.2f ms (%d/%d), CPU %.0f µs/msg, load generator %.2f cores |\n",
			d.Offered, d.Delivered, d.Latency.P50, d.Latency.P99, d.Latency.P999, d.Received, d.Expected, d.CPU.PerMessageUS, d.ClientCores,
			bd.Delivered, bd.Latency.P50, bd.Latency.P99, bd.Received, bd.Expected, bd.CPU.PerMessageUS, bd.ClientCores)
	}
	for i, p := range r.Wspresence.Publish {
		bp := pick(r.Baseline.Publish, i)
		fmt.Fprintf(&b, "| publishers (1 msg/request, %d publishers, %d conns) | %.0f msg/s | %.0f/s, receipt p50 %.2f, p99 %.2f ms%s, POST p50 %.2f, p99 %.2f ms%s (%d/%d frames, %d errors), CPU %.2f s, %.0f µs/msg%s, %.2f commits/msg, load generator %.2f cores%s | %.0f/s, receipt p99 %.2f ms%s, POST p99 %.2f ms%s (%d/%d), CPU %.2f s, %.0f µs/msg%s, load generator %.2f cores%s |\n",
			p.Publishers, p.Connections, p.Offered, p.Delivered, p.Receipt.P50, p.Receipt.P99, passRange(p, receiptP99), p.Post.P50, p.Post.P99, passRange(p, postP99),
			p.Received, p.Expected, p.Errors, p.CPU.Seconds, p.CPU.PerMessageUS, passRange(p, cpuPerMessage), p.CPU.CommitsPerMessage, p.ClientCores, lateness(p),
			bp.Delivered, bp.Receipt.P99, passRange(bp, receiptP99), bp.Post.P99, passRange(bp, postP99), bp.Received, bp.Expected, bp.CPU.Seconds, bp.CPU.PerMessageUS, passRange(bp, cpuPerMessage), bp.ClientCores, lateness(bp))
	}
	if rc := r.Wspresence.Recovery; rc != nil {
		fmt.Fprintf(&b, "| recovery (%d clients, %d msgs each) | live | %.0f msg/s (%d msgs in %.2f s) | – |\n",
			rc.Clients, rc.PerClient, rc.LiveMsgsPerS, rc.Clients*rc.PerClient, rc.LiveSeconds)
		fmt.Fprintf(&b, "| recovery (%d clients reconnecting at once) | replay | %.0f msg/s (%d replayed in %.2f s, %d recovered, %d errors) | – |\n",
			rc.Clients, rc.ReplayMsgsPerS, rc.Replayed, rc.ReplaySeconds, rc.Recovered, rc.Errors)
	}
	for i, m := range r.Wspresence.Memory {
		bm := pick(r.Baseline.Memory, i)
		fmt.Fprintf(&b, "| memory | %d idle | %.1f KB/conn (RSS %.0f → %.0f MiB) | %.1f KB/conn |\n", m.N, m.BytesPerConn/1024, m.RSSBeforeMiB, m.RSSAfterMiB, bm.BytesPerConn/1024)
	}
	r.scaleMarkdown(&b)
	if ref := r.Reference; ref != nil {
		fmt.Fprintf(&b, "\n## Against the build before (`%s`), same run\n\n", r.ReferenceName)
		fmt.Fprintf(&b, "The publishers scenario of an earlier build (`make bench BENCH_REFERENCE=<rev>`), measured the same way right after\n")
		fmt.Fprintf(&b, "wspresence's (%.2f other cores busy, load average %s at its end). Ratios are wspresence / that build.\n\n", ref.Load.OtherCores, ref.Load.LoadAvg)
		b.WriteString("| offered | server CPU per delivered message | before | ratio | store commits per message | before | receipt p99 | before | POST p99 | before |\n|---|---|---|---|---|---|---|---|---|---|\n")
		for i, p := range r.Wspresence.Publish {
			rp := pick(ref.Publish, i)
			ratio := "–"
			if rp.CPU.PerMessageUS > 0 {
				ratio = fmt.Sprintf("%.2f", p.CPU.PerMessageUS/rp.CPU.PerMessageUS)
			}
			fmt.Fprintf(&b, "| %.0f msg/s | %.0f µs (%.2f s for %d)%s | %.0f µs (%.2f s for %d)%s | %s | %.2f | %.2f | %.2f ms | %.2f ms | %.2f ms | %.2f ms |\n",
				p.Offered, p.CPU.PerMessageUS, p.CPU.Seconds, p.Received, passRange(p, cpuPerMessage), rp.CPU.PerMessageUS, rp.CPU.Seconds, rp.Received, passRange(rp, cpuPerMessage), ratio,
				p.CPU.CommitsPerMessage, rp.CPU.CommitsPerMessage, p.Receipt.P99, rp.Receipt.P99, p.Post.P99, rp.Post.P99)
		}
	}
	r.durableMarkdown(&b)
	if r.CPUTop != "" {
		scenario := r.Profile.ProfileScenario
		if scenario == "" {
			scenario = "delivery"
		}
		fmt.Fprintf(&b, "\n## Profiles of the server under the %s scenario\n\nCPU (`go tool pprof -top`):\n\n```\n%s```\n", scenario, r.CPUTop)
		if r.CPUCumTop != "" {
			fmt.Fprintf(&b, "\nCPU, cumulative (`go tool pprof -top -cum`):\n\n```\n%s```\n", r.CPUCumTop)
		}
		fmt.Fprintf(&b, "\nHeap:\n\n```\n%s```\n", r.HeapTop)
	}
	if r.IdleHeapTop != "" {
		n := 0
		if m := r.Wspresence.Memory; len(m) > 0 {
			n = m[len(m)-1].N
		}
		fmt.Fprintf(&b, "\n## Heap of the server with %d idle connections\n\n```\n%s```\n", n, r.IdleHeapTop)
	}
	return b.String()
}

func pick[T any](s []T, i int) T {
	var zero T
	if i < len(s) {
		return s[i]
	}
	return zero
}

func num(v float64, unit string) string {
	switch unit {
	case "/s":
		return fmt.Sprintf("%.0f/s", v)
	case "KB":
		return fmt.Sprintf("%.1f KB", v)
	case "µs":
		return fmt.Sprintf("%.0f µs", v)
	}
	return fmt.Sprintf("%.2f ms", v)
}

// Plot draws enqueue→receipt latency (p50, p99) against the offered rate, both targets.
func (r *Results) Plot(path string) error {
	p := plot.New()
	p.Title.Text = "Delivery: enqueue→receipt latency vs offered rate"
	p.X.Label.Text = "offered messages/s"
	p.Y.Label.Text = "latency (ms)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{}
	series := func(s Side, q func(Latency) float64) plotter.XYs {
		var xy plotter.XYs
		for _, d := range s.Delivery {
			if v := q(d.Latency); v > 0 {
				xy = append(xy, plotter.XY{X: d.Offered, Y: v})
			}
		}
		return xy
	}
	p50 := func(l Latency) float64 { return l.P50 }
	p99 := func(l Latency) float64 { return l.P99 }
	var lines []any // name, points: only the series with points (a run without the delivery scenario has none)
	for _, l := range []struct {
		name string
		xy   plotter.XYs
	}{{"wspresence p50", series(r.Wspresence, p50)}, {"wspresence p99", series(r.Wspresence, p99)},
		{"baseline p50", series(r.Baseline, p50)}, {"baseline p99", series(r.Baseline, p99)}} {
		if len(l.xy) > 0 {
			lines = append(lines, l.name, l.xy)
		}
	}
	if len(lines) == 0 {
		return nil
	}
	if err := plotutil.AddLinePoints(p, lines...); err != nil {
		return err
	}
	p.Legend.Top = true
	p.Legend.Left = true
	p.BackgroundColor = color.White
	if err := os.MkdirAll(dirOf(path), 0o755); err != nil {
		return err
	}
	return p.Save(8*vg.Inch, 5*vg.Inch, path)
}

func dirOf(path string) string {
	if i := strings.LastIndexByte(path, '/'); i >= 0 {
		return path[:i]
	}
	return "."
}

// durableMarkdown renders the durable baselines beside wspresence and the baseline, rate by
// rate: what answering only once durable costs a server that does nothing else.
func (r *Results) durableMarkdown(b *strings.Builder) {
	if len(r.Durable) == 0 {
		return
	}
	b.WriteString("\n## What durability alone costs: durable baselines, same run\n\n")
	b.WriteString("The publishers scenario on the baseline made durable and nothing more: each request's body appended to\n")
	b.WriteString("one file and synced (one write and one `fsync` a group commit) before the 202, the frames pushed after;\n")
	b.WriteString("a commit takes what arrived while the one before synced, held open for more for the hold given. No\n")
	b.WriteString("index, outcome or recovery, two Go Ps on the one core as `serve` has: the least a server answering\n")
	b.WriteString("only once durable does on this machine, with the same HTTP and WebSocket libraries as the baseline.\n")
	if r.Reference != nil {
		fmt.Fprintf(b, "The last column is a third of the CPU a message of the build before (`%s`) in this run.\n", r.ReferenceName)
	}
	b.WriteString("\n| offered | server | CPU per delivered message | commits per message | receipt p99 | POST p50 | POST p99 | a third of the build before |\n|---|---|---|---|---|---|---|---|\n")
	for i, p := range r.Wspresence.Publish {
		bound := "–"
		if r.Reference != nil {
			if rp := pick(r.Reference.Publish, i); rp.CPU.PerMessageUS > 0 {
				bound = fmt.Sprintf("%.0f µs", rp.CPU.PerMessageUS/3)
			}
		}
		line := func(name string, q PublishResult) {
			fmt.Fprintf(b, "| %.0f msg/s | %s | %.0f µs%s | %.2f | %.2f ms | %.2f ms | %.2f ms%s | %s |\n",
				p.Offered, name, q.CPU.PerMessageUS, passRange(q, cpuPerMessage), q.CPU.CommitsPerMessage, q.Receipt.P99, q.Post.P50, q.Post.P99, passRange(q, postP99), bound)
		}
		line("wspresence", p)
		for _, d := range r.Durable {
			line(fmt.Sprintf("durable baseline, hold %v", d.Hold), pick(d.Publish, i))
		}
		line("baseline (not durable)", pick(r.Baseline.Publish, i))
	}
}
