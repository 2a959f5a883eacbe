package bench

import (
	"fmt"
	"strings"
)

// scaleMarkdown renders the users, churn and flood scenarios (wspresence only).
func (r *Results) scaleMarkdown(b *strings.Builder) {
	w := r.Wspresence
	if u := w.Users; u != nil && len(u.Points) > 0 {
		fmt.Fprintf(b, "\n## Users: distinct users who visited once, all offline\n\n")
		fmt.Fprintf(b, "A server of its own (unpinned), every retention (log, outbox, closed connections) at %s and the\n", u.Retention)
		fmt.Fprintf(b, "offline grace at 1 s; each user connects once and leaves, %d clients at once. Once all are offline\n", u.Concurrency)
		b.WriteString("and the retentions passed: the heap after a collection, the RSS, the store (database + WAL) and the users\n")
		b.WriteString("the memory image holds (`wspresence_image_users`); then the delivery scenario at saturation on that store\n")
		b.WriteString("(the WAL file sampled every 20 ms: its peak); then a restart on the store, timed from the process's start\n")
		b.WriteString("until `/healthz` answers 200, and the same figures after it.\n\n")
		b.WriteString("| users | visits/s | heap | RSS | store (WAL) | image users | start time | heap after restart | RSS after restart | WAL peak at saturation | errors |\n")
		b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, p := range u.Points {
			fmt.Fprintf(b, "| %d | %.0f/s | %.1f MiB | %.1f MiB | %.1f MiB (%.1f) | %.0f | %.2f s | %.1f MiB | %.1f MiB | %.1f MiB (%.0f of %.0f msg/s delivered) | %d |\n",
				p.Users, p.VisitsPerS, p.Offline.HeapMiB, p.Offline.RSSMiB, p.Offline.StoreMiB, p.Offline.WALMiB, p.Offline.ImageUsers,
				p.StartSeconds, p.Restarted.HeapMiB, p.Restarted.RSSMiB, p.WALPeakMiB, p.DeliveryPerS, p.SaturationRate, p.Errors)
		}
	}
	if c := w.Churn; c != nil && len(c.Samples) > 0 {
		fmt.Fprintf(b, "\n## Churn: steady visitors, short retentions\n\n")
		fmt.Fprintf(b, "A server of its own (unpinned), every retention (the offline users' too) at %s, the offline grace at 1 s: %.0f new users a second\n", c.Retention, c.Rate)
		fmt.Fprintf(b, "connect, stay %s and leave, for %s (%d visits, %d errors). The footprint is sampled through the run;\n", c.Stay, c.Duration, c.Visits, c.Errors)
		fmt.Fprintf(b, "the retentions have passed from %.0f s on, and the slopes are fitted over the samples from then.\n\n", c.Settled)
		b.WriteString("| at | heap | RSS | store (WAL) | image users |\n|---|---|---|---|---|\n")
		for _, s := range c.Samples {
			fmt.Fprintf(b, "| %.0f s | %.1f MiB | %.1f MiB | %.2f MiB (%.2f) | %.0f |\n", s.AtSeconds, s.HeapMiB, s.RSSMiB, s.StoreMiB, s.WALMiB, s.ImageUsers)
		}
		fmt.Fprintf(b, "\nSlope once the retentions passed: heap %+.0f KiB/min, store %+.0f KiB/min (database alone %+.0f KiB/min).\n",
			c.HeapSlope, c.StoreSlope, c.DatabaseSlope)
	}
	if len(w.Flood) > 0 {
		b.WriteString("\n## Flood: concurrent request bodies over the budget\n\n")
		b.WriteString("Concurrent `POST /messages` with valid bodies, far over the body budget together (or each over the\n")
		b.WriteString("largest request), from one Go client; `/healthz` (a new connection each) and a WebSocket connect of a new\n")
		b.WriteString("user are started every 50 ms by a probe process of their own (no CPU time, goroutine or connection shared\n")
		b.WriteString("with the flood's), first without the flood, then during it (same server, same run). The load generator\n")
		b.WriteString("and the probes keep to the CPUs the server is not pinned to; server CPU over the flood's time is its share\n")
		b.WriteString("of its one core.\n\n")
		if r.FloodRun != "" {
			fmt.Fprintf(b, "These figures come from a run of the flood scenario alone on the same machine, `bench/results/%s`.\n\n", r.FloodRun)
		}
		b.WriteString("| requests × body | 202 / 400 too large / 503 / no answer | flood time | refused: answer p50, p99 | /healthz p50, p99, max: idle → flood | connect p50, p99, max: idle → flood | server peak RSS | server CPU | client CPU |\n")
		b.WriteString("|---|---|---|---|---|---|---|---|---|\n")
		lat := func(l Latency) string { return fmt.Sprintf("%.0f, %.0f, %.0f ms", l.P50, l.P99, l.Max) }
		for _, f := range w.Flood {
			fmt.Fprintf(b, "| %d × %.1f MB | %d / %d / %d / %d | %.2f s | %.0f, %.0f ms | %s → %s | %s → %s | %.0f MiB | %.2f s | %.2f s |\n",
				f.Requests, float64(f.BodyBytes)/1e6, f.Accepted, f.TooLarge, f.Unavailable, f.Failed, f.Seconds,
				f.RefusedAnswer.P50, f.RefusedAnswer.P99, lat(f.HealthIdle), lat(f.HealthFlood), lat(f.ConnectIdle), lat(f.ConnectFlood),
				f.PeakRSSMiB, f.CPUSeconds, f.ClientCPUSeconds)
		}
	}
}
