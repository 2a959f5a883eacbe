package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Profile sizes a run.
type Profile struct {
	Name          string        `json:"name"`
	ConnectN      int           `json:"connect_n"`
	ConnectRates  []float64     `json:"connect_rates"`
	Users, Conns  int           `json:"-"`
	DeliveryRates []float64     `json:"delivery_rates"`
	PhaseDuration time.Duration `json:"phase_duration_ns"`
	Batch         int           `json:"batch"`
	LagSamples    int           `json:"lag_samples"`
	RESTDuration  time.Duration `json:"rest_duration_ns"`
	RESTRate1     int           `json:"rest_rate_1"`
	RESTRate100   int           `json:"rest_rate_100"`
	MemoryN       []int         `json:"memory_n"`
	// The publishers scenario: each of PubRates messages a second, one per request, from
	// Publishers concurrent publishers, to PubConns connections of as many users.
	PubRates   []float64 `json:"publish_rates"`
	Publishers int       `json:"publishers"`
	PubConns   int       `json:"publish_connections"`
	// PubPasses is how many passes of PhaseDuration each rate gets, interleaved, pooled
	// into its point (at least one).
	PubPasses int `json:"publish_passes,omitempty"`
	// DurableHolds: the publishers scenario is also run on a durable baseline (the
	// baseline appending each body to a log it syncs before the 202, in group commits)
	// once per hold here, each commit held open that long: what durability alone costs.
	DurableHolds []time.Duration `json:"durable_holds_ns,omitempty"`
	// The recovery scenario (wspresence only: the baseline does not recover): RecClients
	// recovering clients reconnecting at once, RecMessages messages each.
	RecClients  int `json:"recovery_clients"`
	RecMessages int `json:"recovery_messages"`
	// The users scenario (wspresence only, a server of its own, unpinned): UsersN distinct
	// users in all at each point (ascending), visiting once each from UsersConcurrency
	// clients at once.
	UsersN           []int `json:"users_n,omitempty"`
	UsersConcurrency int   `json:"users_concurrency,omitempty"`
	// The churn scenario (wspresence only, a server of its own, unpinned): ChurnRate new
	// visitors a second, each staying ChurnStay, for ChurnDuration, every retention (the
	// offline users' too) at ChurnRetention, the footprint sampled every ChurnSample.
	ChurnRate      float64       `json:"churn_rate,omitempty"`
	ChurnStay      time.Duration `json:"churn_stay_ns,omitempty"`
	ChurnDuration  time.Duration `json:"churn_duration_ns,omitempty"`
	ChurnRetention time.Duration `json:"churn_retention_ns,omitempty"`
	ChurnSample    time.Duration `json:"churn_sample_ns,omitempty"`
	// The flood scenario (wspresence only): FloodRequests concurrent POST /messages of
	// each of FloodBytes (one flood per size), /healthz and connects probed for FloodIdle
	// before it and during it.
	FloodRequests int           `json:"flood_requests,omitempty"`
	FloodBytes    []int         `json:"flood_bytes,omitempty"`
	FloodIdle     time.Duration `json:"flood_idle_ns,omitempty"`
	// Only, if set, names the scenarios to run (memory, connect, lag, rest, delivery,
	// publishers, recovery, flood, users, churn) and the others are skipped; Targets, if
	// set, names the sides to measure (baseline, with the durable baselines; wspresence).
	// Partial runs are for profiling one scenario, not for reports.
	Only    []string `json:"only,omitempty"`
	Targets []string `json:"targets,omitempty"`
	// ProfileScenario is the scenario the server's CPU and heap profiles cover: publishers
	// (default: one more pass at its highest rate, profiled and not reported, so the
	// profiler's own cost stays out of the measured points), delivery (its middle rate) or
	// flood (a pass of its own at its first size).
	ProfileScenario string `json:"profile_scenario,omitempty"`
}

// durableHolds are the holds of the durable baselines of the short and long profiles: none
// (the lowest POST latency a group commit gives), 1 ms, and wspresence's default
// --commit-delay.
var durableHolds = []time.Duration{0, time.Millisecond, 5 * time.Millisecond}

// runs reports whether scenario is part of the run.
func (p Profile) runs(scenario string) bool {
	return len(p.Only) == 0 || slices.Contains(p.Only, scenario)
}

// Profiles: smoke (CI, seconds), short (make bench, about 20 minutes: the users scenario's
// million visits take most of it), long.
var Profiles = map[string]Profile{
	"smoke": {Name: "smoke", ConnectN: 50, ConnectRates: []float64{500}, Users: 20, Conns: 40, DeliveryRates: []float64{500},
		PhaseDuration: time.Second, Batch: 10, LagSamples: 5, RESTDuration: time.Second, RESTRate1: 100, RESTRate100: 50, MemoryN: []int{100},
		PubRates: []float64{200}, Publishers: 16, PubConns: 100, PubPasses: 2, DurableHolds: []time.Duration{0}, RecClients: 20, RecMessages: 5,
		UsersN: []int{200, 400}, UsersConcurrency: 16, ChurnRate: 50, ChurnStay: time.Second, ChurnDuration: 8 * time.Second,
		ChurnRetention: time.Second, ChurnSample: time.Second, FloodRequests: 100, FloodBytes: []int{1 << 20, 5 << 20}, FloodIdle: time.Second},
	"short": {Name: "short", ConnectN: 3000, ConnectRates: []float64{1000, 3000, 6000}, Users: 1000, Conns: 2000,
		DeliveryRates: []float64{2000, 5000, 10000, 20000, 40000}, PhaseDuration: 3 * time.Second, Batch: 50, LagSamples: 100,
		RESTDuration: 3 * time.Second, RESTRate1: 2000, RESTRate100: 500, MemoryN: []int{2000, 10000},
		PubRates: []float64{1000, 4000}, Publishers: 128, PubConns: 4000, PubPasses: 3, DurableHolds: durableHolds, RecClients: 1000, RecMessages: 20,
		UsersN: []int{100_000, 1_000_000}, UsersConcurrency: 64, ChurnRate: 200, ChurnStay: time.Second, ChurnDuration: time.Minute,
		ChurnRetention: time.Second, ChurnSample: 5 * time.Second, FloodRequests: 1000, FloodBytes: []int{1 << 20, 5 << 20}, FloodIdle: 2 * time.Second},
	"long": {Name: "long", ConnectN: 10000, ConnectRates: []float64{2000, 5000, 10000, 15000}, Users: 5000, Conns: 10000,
		DeliveryRates: []float64{5000, 10000, 20000, 40000, 60000, 80000}, PhaseDuration: 10 * time.Second, Batch: 100, LagSamples: 500,
		RESTDuration: 10 * time.Second, RESTRate1: 5000, RESTRate100: 1000, MemoryN: []int{1000, 5000, 10000},
		PubRates: []float64{1000, 4000}, Publishers: 128, PubConns: 4000, PubPasses: 3, DurableHolds: durableHolds, RecClients: 1000, RecMessages: 50,
		UsersN: []int{100_000, 1_000_000}, UsersConcurrency: 64, ChurnRate: 200, ChurnStay: time.Second, ChurnDuration: 5 * time.Minute,
		ChurnRetention: time.Second, ChurnSample: 10 * time.Second, FloodRequests: 1000, FloodBytes: []int{1 << 20, 5 << 20}, FloodIdle: 2 * time.Second},
}

// Side is one target's figures.
type Side struct {
	Connect   []ConnectResult `json:"connect"`
	Delivery  []DeliveryPoint `json:"delivery"`
	LagIdle   Latency         `json:"projection_lag_idle"`
	LagLoaded Latency         `json:"projection_lag_half_load"`
	REST1     RESTResult      `json:"rest_1_id"`
	REST100   RESTResult      `json:"rest_100_ids"`
	Memory    []MemoryResult  `json:"memory"`
	Publish   []PublishResult `json:"publishers"`
	// Recovery is the recovery scenario (wspresence only).
	Recovery *RecoveryResult `json:"recovery,omitempty"`
	// Flood, Users and Churn are the flood, users and churn scenarios (wspresence only;
	// users and churn on servers of their own).
	Flood  []FloodResult `json:"flood,omitempty"`
	Users  *UsersResult  `json:"users,omitempty"`
	Churn  *ChurnResult  `json:"churn,omitempty"`
	Errors int           `json:"errors"`
	// Load is how busy the machine was with other work while this side ran.
	Load MachineLoad `json:"machine_load"`
}

// Results is one run.
type Results struct {
	Date       time.Time `json:"date"`
	Profile    Profile   `json:"profile"`
	Machine    Machine   `json:"machine"`
	Wspresence Side      `json:"wspresence"`
	Baseline   Side      `json:"baseline"`
	// Reference, if set, is an earlier build's publishers scenario (ReferenceName says
	// which), measured right after wspresence's.
	Reference     *Side  `json:"reference,omitempty"`
	ReferenceName string `json:"reference_name,omitempty"`
	// Durable are the publishers scenario's durable baselines, one per profile hold,
	// measured after the other sides.
	Durable []DurableSide `json:"durable,omitempty"`
	// FloodRun, if set, names the results file the flood scenario's figures were taken
	// from: a run of that scenario alone, rendered into this one's report (--flood-from).
	FloodRun  string `json:"flood_run,omitempty"`
	CPUTop    string `json:"cpu_profile_top"`
	CPUCumTop string `json:"cpu_profile_cum_top,omitempty"`
	HeapTop   string `json:"heap_profile_top"`
	// IdleHeapTop is the heap profile's top list with the memory scenario's largest number
	// of idle connections open.
	IdleHeapTop string `json:"idle_heap_profile_top,omitempty"`
}

// Machine describes where the run happened.
type Machine struct {
	CPUs   int    `json:"nproc"`
	Model  string `json:"cpu_model"`
	Go     string `json:"go"`
	Pinned bool   `json:"pinned"`
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				m.Model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	_, err := exec.LookPath("taskset")
	m.Pinned = err == nil && m.CPUs >= 2
	return m
}

// DurableSide is the publishers scenario on a durable baseline whose group commits are
// held open for Hold.
type DurableSide struct {
	Hold time.Duration `json:"hold_ns"`
	Side
}

// Reference is an earlier build of wspresence measured in the same run, on the
// publishers scenario only, right after the build under test: the before of a change.
type Reference struct {
	// Bin is its binary; Name says what it was built from (a git revision).
	Bin, Name string
}

// Run measures both targets with profile p, then ref if it names a binary. serverBin is
// the wspresence binary, self this program (for the baseline server), outDir receives
// profiles.
func Run(ctx context.Context, p Profile, serverBin string, ref Reference, self, outDir string, log *slog.Logger) (*Results, error) {
	res := &Results{Date: time.Now().UTC(), Profile: p, Machine: machine()}
	cpuServer := ""
	if res.Machine.Pinned {
		cpuServer = "0"
	}
	sides := []string{"baseline", "wspresence"}
	if ref.Bin != "" {
		sides = append(sides, "reference")
	}
	for _, name := range sides {
		if len(p.Targets) > 0 && !slices.Contains(p.Targets, name) && name != "reference" {
			continue
		}
		var t *Target
		var err error
		sp := p
		switch name {
		case "baseline":
			t, err = StartBaseline(self, cpuServer)
		default:
			bin := serverBin
			if name == "reference" {
				bin, sp.Only, sp.ProfileScenario = ref.Bin, []string{"publishers"}, ""
			}
			dir, derr := os.MkdirTemp("", "wspresence-bench-")
			if derr != nil {
				return nil, derr
			}
			defer os.RemoveAll(dir)
			t, err = StartWspresence(bin, dir, cpuServer)
			t.Name = name
		}
		if err != nil {
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
		side, tops, idleHeapTop := measureSide(ctx, t, sp, outDir, log)
		switch name {
		case "baseline":
			res.Baseline = side
		case "reference":
			res.Reference, res.ReferenceName = &side, ref.Name
		default:
			res.Wspresence, res.IdleHeapTop = side, idleHeapTop
			res.CPUTop, res.CPUCumTop, res.HeapTop = tops.cpu, tops.cpuCum, tops.heap
		}
	}
	if p.runs("publishers") && (len(p.Targets) == 0 || slices.Contains(p.Targets, "baseline")) {
		for _, hold := range p.DurableHolds {
			side, err := measureDurable(ctx, p, self, cpuServer, hold, outDir, log)
			if err != nil {
				return nil, err
			}
			res.Durable = append(res.Durable, DurableSide{Hold: hold, Side: side})
		}
	}
	if len(p.Targets) > 0 && !slices.Contains(p.Targets, "wspresence") {
		return res, nil
	}
	// The scenarios on servers of their own, unpinned: they drive many clients at once.
	w := &res.Wspresence
	if len(p.UsersN) > 0 && p.runs("users") {
		u, err := Users(ctx, serverBin, p.UsersN, p.UsersConcurrency, p, log)
		if err != nil {
			return nil, fmt.Errorf("users scenario: %w", err)
		}
		w.Users = &u
		for _, pt := range u.Points {
			w.Errors += pt.Errors
		}
	}
	if p.ChurnRate > 0 && p.runs("churn") {
		c, err := Churn(ctx, serverBin, p.ChurnRate, p.ChurnStay, p.ChurnDuration, p.ChurnRetention, p.ChurnSample, log)
		if err != nil {
			return nil, fmt.Errorf("churn scenario: %w", err)
		}
		w.Churn = &c
		w.Errors += c.Errors
	}
	return res, nil
}

// measureDurable runs the publishers scenario on a durable baseline holding its commits
// for hold, its log in a directory of its own.
func measureDurable(ctx context.Context, p Profile, self, cpu string, hold time.Duration, outDir string, log *slog.Logger) (Side, error) {
	dir, err := os.MkdirTemp("", "wspresence-bench-durable-")
	if err != nil {
		return Side{}, err
	}
	defer os.RemoveAll(dir)
	t, err := StartDurableBaseline(self, dir, cpu, hold)
	if err != nil {
		return Side{}, fmt.Errorf("start durable baseline: %w", err)
	}
	p.Only, p.ProfileScenario = []string{"publishers"}, ""
	side, _, _ := measureSide(ctx, t, p, outDir, log)
	return side, nil
}

// measureSide measures t with p and stops it. The load generator keeps to the CPUs the
// server is not pinned to for the whole side, so its work (and its collector) never takes
// the server's core; the machine's other load over the side is kept in its Load.
func measureSide(ctx context.Context, t *Target, p Profile, outDir string, log *slog.Logger) (Side, profileTops, string) {
	release := ConfineLoad(t)
	load := startLoad(t)
	side, tops, idleHeapTop := measure(ctx, t, p, outDir, log)
	side.Load = load.stop()
	release()
	t.Stop()
	return side, tops, idleHeapTop
}

// profileTops are the top lists of the server's profiles.
type profileTops struct{ cpu, cpuCum, heap string }

func measure(ctx context.Context, t *Target, p Profile, outDir string, log *slog.Logger) (Side, profileTops, string) {
	var s Side
	var idleHeapTop string
	if p.runs("memory") {
		log.Info("memory per idle connection", "target", t.Name)
		for i, n := range p.MemoryN {
			heapDir := ""
			if i == len(p.MemoryN)-1 && p.Name != "smoke" {
				heapDir = outDir // the heap of the largest N, idle
			}
			m, heap := Memory(ctx, t, n, fmt.Sprintf("mem%d", n), heapDir)
			if heap != "" {
				idleHeapTop = top(heap)
			}
			s.Memory = append(s.Memory, m)
			s.Errors += m.Errors
			time.Sleep(500 * time.Millisecond)
		}
	}
	if p.runs("connect") {
		log.Info("connect rate", "target", t.Name)
		Connect(ctx, t, min(200, p.ConnectN), p.ConnectRates[0], "warmup") // warm-up, not measured
		time.Sleep(500 * time.Millisecond)
		for i, rate := range p.ConnectRates {
			c := Connect(ctx, t, p.ConnectN, rate, fmt.Sprintf("conn%d", i))
			s.Connect = append(s.Connect, c)
			s.Errors += c.Errors
			time.Sleep(time.Second)
		}
	}
	var errs int
	if p.runs("lag") {
		log.Info("projection lag at idle", "target", t.Name)
		s.LagIdle, errs = Lag(ctx, t, p.LagSamples, "lagidle")
		s.Errors += errs
	}
	// profile starts the server's profiles over the next phase, if profiled is true.
	profile := func(profiled bool) <-chan profileTops {
		out := make(chan profileTops, 1)
		if !profiled || outDir == "" || p.Name == "smoke" {
			out <- profileTops{}
			return out
		}
		go func() {
			cpu, heap, err := t.Profile(ctx, outDir, int(p.PhaseDuration.Seconds()))
			if err != nil || cpu == "" {
				out <- profileTops{}
				return
			}
			out <- profileTops{cpu: top(cpu), cpuCum: top(cpu, "-cum", "-nodecount=30"), heap: top(heap)}
		}()
		return out
	}
	var tops profileTops
	if p.runs("rest") || p.runs("delivery") {
		fleet := OpenFleet(ctx, t, p.Users, p.Conns, 2000, "user")
		s.Errors += fleet.Errors()
		if p.runs("rest") {
			log.Info("REST", "target", t.Name)
			s.REST1 = REST(t, fleet.Users[:1], p.RESTRate1, p.RESTDuration)
			s.REST100 = REST(t, fleet.Users[:min(100, len(fleet.Users))], p.RESTRate100, p.RESTDuration)
			s.Errors += s.REST1.Errors + s.REST100.Errors
		}
		if p.runs("delivery") {
			log.Info("delivery", "target", t.Name)
			fleet.Deliver(ctx, t, p.DeliveryRates[0], p.PhaseDuration/2, p.Batch) // warm-up, not measured
			for i, rate := range p.DeliveryRates {
				profiled := profile(p.ProfileScenario == "delivery" && i == len(p.DeliveryRates)/2)
				d := fleet.Deliver(ctx, t, rate, p.PhaseDuration, p.Batch)
				s.Delivery = append(s.Delivery, d)
				s.Errors += d.Errors
				if got := <-profiled; got.cpu != "" {
					tops = got
				}
			}
			// Projection lag under half the highest rate that kept up.
			knee := kneeRate(s.Delivery)
			log.Info("projection lag at half load", "target", t.Name, "rate", knee/2)
			loadCtx, stop := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() {
				defer close(done)
				for loadCtx.Err() == nil {
					fleet.Deliver(loadCtx, t, knee/2, time.Second, p.Batch)
				}
			}()
			s.LagLoaded, errs = Lag(ctx, t, p.LagSamples, "lagload")
			s.Errors += errs
			stop()
			<-done
		}
		fleet.Close()
	}
	if p.PubConns > 0 && len(p.PubRates) > 0 && p.runs("publishers") {
		log.Info("publishers", "target", t.Name, "rates", p.PubRates, "publishers", p.Publishers, "connections", p.PubConns)
		pubs := OpenFleet(ctx, t, p.PubConns, p.PubConns, 2000, "pub")
		s.Errors += pubs.Errors()
		pubs.Publish(ctx, t, p.PubRates[0], p.PhaseDuration/2, p.Publishers) // warm-up, not measured
		s.Publish = pubs.PublishPasses(ctx, t, p.PubRates, p.PhaseDuration, p.Publishers, p.PubPasses)
		for _, r := range s.Publish {
			s.Errors += r.Errors
		}
		if p.ProfileScenario == "publishers" {
			profiled := profile(true)
			pubs.Publish(ctx, t, p.PubRates[len(p.PubRates)-1], p.PhaseDuration, p.Publishers)
			if got := <-profiled; got.cpu != "" {
				tops = got
			}
		}
		pubs.Close()
	}
	if p.RecClients > 0 && !t.baseline && p.runs("recovery") {
		log.Info("recovery", "target", t.Name, "clients", p.RecClients, "messages", p.RecMessages)
		r := Recovery(ctx, t, p.RecClients, p.RecMessages, 100)
		s.Recovery = &r
		s.Errors += r.Errors
	}
	if p.FloodRequests > 0 && !t.baseline && p.runs("flood") {
		for _, size := range p.FloodBytes {
			log.Info("flood", "target", t.Name, "requests", p.FloodRequests, "bytes", size)
			f, _ := Flood(ctx, t, p.FloodRequests, size, p.FloodIdle, clientCPUs(t), "")
			s.Flood = append(s.Flood, f)
			s.Errors += f.Other + f.ProbeErrors // a refused request reset before its answer is read is no error
			time.Sleep(2 * time.Second)         // the accepted bodies written
		}
		if p.ProfileScenario == "flood" && outDir != "" && len(p.FloodBytes) > 0 {
			if _, cpu := Flood(ctx, t, p.FloodRequests, p.FloodBytes[0], p.FloodIdle, clientCPUs(t), outDir); cpu != "" {
				tops = profileTops{cpu: top(cpu), cpuCum: top(cpu, "-cum", "-nodecount=30")}
			}
		}
	}
	return s, tops, idleHeapTop
}

// ConfineLoad keeps every thread of this program (the load generator) to the CPUs t's
// server is not pinned to, until the returned function is called; a no-op when the server
// is not pinned or taskset is missing.
func ConfineLoad(t *Target) func() { return ConfineSelf(clientCPUs(t)) }

// clientCPUs are the CPUs the load generator keeps to while t's server is pinned to one
// (every other; empty when the server is not pinned).
func clientCPUs(t *Target) string {
	if t.cpu == "" || runtime.NumCPU() < 2 {
		return ""
	}
	return fmt.Sprintf("1-%d", runtime.NumCPU()-1)
}

// MachineLoad is the machine's CPU time spent outside the server under test and this program
// while one side ran: the noise of a shared machine, in cores busy on average.
type MachineLoad struct {
	OtherCores float64 `json:"other_cores"`
	// LoadAvg is /proc/loadavg's one-minute figure at the end.
	LoadAvg string `json:"loadavg_1m"`
}

// loadMeter measures MachineLoad over a side's run.
type loadMeter struct {
	t                  *Target
	busy, server, self float64
	start              time.Time
}

func startLoad(t *Target) loadMeter {
	m := loadMeter{t: t, start: time.Now()}
	m.busy, _ = machineBusy()
	m.server, _ = t.CPUSeconds()
	m.self, _ = selfCPU()
	return m
}

func (m loadMeter) stop() MachineLoad {
	busy, err1 := machineBusy()
	server, err2 := m.t.CPUSeconds()
	self, err3 := selfCPU()
	var l MachineLoad
	if data, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(data)); len(f) > 0 {
			l.LoadAvg = f[0]
		}
	}
	if err1 != nil || err2 != nil || err3 != nil {
		return l
	}
	other := (busy - m.busy) - (server - m.server) - (self - m.self)
	l.OtherCores = max(0, other) / time.Since(m.start).Seconds()
	return l
}

// machineBusy is the CPU seconds every CPU of the machine spent busy (not idle, not
// waiting for I/O) since boot, from /proc/stat.
func machineBusy() (float64, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: %q", line)
	}
	var busy int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 8 { // guest time is counted in user already
			break
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %q", line)
		}
		busy += n
	}
	return float64(busy) / clockTicks, nil
}

// selfCPU is this program's CPU time so far (the load generator), in seconds.
func selfCPU() (float64, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime), nil
}

// selfMeter starts timing this program's CPU; the function it returns gives the cores it
// kept busy since (CPU time / wall time; 0 if the CPU time cannot be read).
func selfMeter() func() float64 {
	start := time.Now()
	before, err := selfCPU()
	return func() float64 {
		after, err2 := selfCPU()
		wall := time.Since(start).Seconds()
		if err != nil || err2 != nil || wall <= 0 {
			return 0
		}
		return (after - before) / wall
	}
}

// gcPauseLimit is the heap at which the load generator's collector runs anyway while it is
// held off (pauseGC): far above what a phase allocates, far below the machine's memory.
const gcPauseLimit = 4 << 30

// pauseGC runs the load generator's collector now, then holds it off until the returned
// function is called (unless the heap reaches gcPauseLimit), so that its pauses and mark
// work, on the one core left to it, stay out of the latencies of a measured phase.
func pauseGC() func() {
	runtime.GC()
	pct := debug.SetGCPercent(-1)
	limit := debug.SetMemoryLimit(gcPauseLimit)
	return func() {
		debug.SetGCPercent(pct)
		debug.SetMemoryLimit(limit)
	}
}

// kneeRate is the highest offered rate that was delivered in full (95%).
func kneeRate(points []DeliveryPoint) float64 {
	knee := 0.0
	for _, d := range points {
		if d.Received >= d.Expected*95/100 && d.Delivered >= d.Offered*0.9 {
			knee = d.Offered
		}
	}
	if knee == 0 && len(points) > 0 {
		knee = points[0].Offered
	}
	return knee
}

// top is pprof's top list of profile (15 nodes by flat time unless args say otherwise).
func top(profile string, args ...string) string {
	if len(args) == 0 {
		args = []string{"-nodecount=15"}
	}
	out, err := exec.Command("go", append(append([]string{"tool", "pprof", "-top"}, args...), profile)...).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(go tool pprof failed: %v)", err)
	}
	return string(out)
}

// Save writes the results JSON into dir as <date>.json.
func (r *Results) Save(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, r.Date.Format("2006-01-02T150405Z")+".json")
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", err
	}
	return path, os.WriteFile(path, append(data, '\n'), 0o644)
}

// Load reads results saved by Save.
func Load(path string) (*Results, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Results
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}

// ErrScenario reports that a scenario had errors.
var ErrScenario = errors.New("scenario errors")

// Check returns ErrScenario when any scenario of either side had errors; in the smoke
// profile (rates far below capacity) a delivery backlog counts as an error too.
func (r *Results) Check() error {
	if r.Reference != nil && r.Reference.Errors > 0 {
		return fmt.Errorf("%w: reference %d", ErrScenario, r.Reference.Errors)
	}
	for _, d := range r.Durable {
		if d.Errors > 0 {
			return fmt.Errorf("%w: durable baseline (hold %v) %d", ErrScenario, d.Hold, d.Errors)
		}
	}
	if r.Wspresence.Errors > 0 || r.Baseline.Errors > 0 {
		return fmt.Errorf("%w: wspresence %d, baseline %d", ErrScenario, r.Wspresence.Errors, r.Baseline.Errors)
	}
	if r.Profile.Name == "smoke" {
		for _, s := range []Side{r.Wspresence, r.Baseline} {
			for _, d := range s.Delivery {
				if d.Backlog > 0 {
					return fmt.Errorf("%w: %d frames not delivered at %.0f msg/s", ErrScenario, d.Backlog, d.Offered)
				}
			}
		}
	}
	return nil
}
