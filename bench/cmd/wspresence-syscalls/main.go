// Command wspresence-syscalls counts the system calls `wspresence serve` makes per
// delivered message in the publishers scenario (one message per POST /messages, from
// concurrent publishers at a fixed rate, to idle connections of as many users), by name:
// the kernel's share of a message, which a user-space count (wspresence-instructions)
// does not see. Counts do not move with the machine's other load as CPU seconds do.
//
// The server runs pinned to CPU 0 and this program on the others, as in wspresence-bench;
// the connections open, a warm-up phase runs, then for each rate `perf stat` counts the
// server's system calls (every thread, tracepoints syscalls:sys_enter_*) from the first
// request until every frame has arrived and the outcomes are recorded, and the counts are
// divided by the messages delivered.
// With --trace, a runtime trace of each phase's first seconds counts the goroutines started
// and woken a message and times its POST /messages on the server: the whole, the part
// blocked for the group commit, and the wait for the CPU once answered (p50, p99).
//
//	wspresence-syscalls --server ./wspresence [--reference ./wspresence-before] [--rates 1000,4000] [--seconds 3]
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wspresence/wspresence/bench/internal/bench"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "wspresence-syscalls:", err)
		os.Exit(1)
	}
}

func run() error {
	server := flag.String("server", "", "path of the wspresence binary (required)")
	reference := flag.String("reference", "", "path of an earlier binary, measured the same way after it")
	rates := flag.String("rates", "1000,4000", "messages per second of each measured phase (comma-separated)")
	seconds := flag.Float64("seconds", 3, "length of each measured phase")
	conns := flag.Int("connections", 4000, "connections, one user each")
	publishers := flag.Int("publishers", 128, "concurrent publishers")
	record := flag.String("record", "", "folder to write, per rate, a perf record of each system call with its stack (perf script reads it)")
	recordEvent := flag.String("record-event", "raw_syscalls:sys_enter", "event --record samples (cpu-clock: where the CPU time goes, the kernel's included)")
	traceDir := flag.String("trace", "", "folder to write, per rate, a runtime trace of the phase's first seconds (/debug/pprof/trace), whose goroutines started and woken are counted and whose POST /messages are timed on the server")
	count := flag.Bool("count", true, "count the system calls (false: the CPU time alone, without perf's own cost)")
	flag.Parse()
	if *server == "" {
		return errors.New("--server is required")
	}
	if _, err := exec.LookPath("perf"); err != nil {
		return errors.New("perf is not installed")
	}
	var rs []float64
	for _, s := range strings.Split(*rates, ",") {
		r, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil {
			return fmt.Errorf("--rates: %w", err)
		}
		rs = append(rs, r)
	}
	dur := time.Duration(*seconds * float64(time.Second))
	var all [][]phase
	var names []string
	for _, bin := range []string{*server, *reference} {
		if bin == "" {
			continue
		}
		ph, err := measure(bin, rs, dur, *conns, *publishers, *count, *record, *recordEvent, *traceDir)
		if err != nil {
			return fmt.Errorf("%s: %w", bin, err)
		}
		all = append(all, ph)
		names = append(names, bin)
	}
	for i, rate := range rs {
		fmt.Printf("\n%.0f msg/s: system calls per delivered message\n", rate)
		seen := map[string]bool{}
		for _, side := range all {
			for name, n := range side[i].counts {
				if n/float64(side[i].messages) >= 0.005 {
					seen[name] = true
				}
			}
		}
		var keys []string
		for k := range seen {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(a, b int) bool { return all[0][i].counts[keys[a]] > all[0][i].counts[keys[b]] })
		fmt.Printf("%-20s", "")
		for _, n := range names {
			fmt.Printf(" %14s", filepath.Base(n))
		}
		fmt.Println()
		row := func(label string, f func(p phase) float64) {
			fmt.Printf("%-20s", label)
			for _, side := range all {
				fmt.Printf(" %14.3f", f(side[i]))
			}
			fmt.Println()
		}
		for _, k := range keys {
			row(k, func(p phase) float64 { return p.counts[k] / float64(p.messages) })
		}
		row("total", func(p phase) float64 { return p.total / float64(p.messages) })
		row("context switches", func(p phase) float64 { return p.switches / float64(p.messages) })
		row("store commits", func(p phase) float64 { return p.commits / float64(p.messages) })
		row("CPU us/message", func(p phase) float64 { return p.cpu / float64(p.messages) * 1e6 })
		row("messages", func(p phase) float64 { return float64(p.messages) })
		if all[0][i].wakes == nil {
			continue
		}
		row("goroutines started", func(p phase) float64 { return p.wakes.started })
		row("goroutines woken", func(p phase) float64 { return p.wakes.woken })
		fmt.Printf("POST /messages in the trace, on the server (ms): the whole, blocked for the group commit, waiting for the CPU once answered\n")
		row("POSTs traced", func(p phase) float64 { return float64(len(p.wakes.posts.total)) })
		for _, q := range []float64{0.5, 0.99} {
			row(fmt.Sprintf("whole p%.0f", q*100), func(p phase) float64 { return quantile(p.wakes.posts.total, q) })
			row(fmt.Sprintf("store p%.0f", q*100), func(p phase) float64 { return quantile(p.wakes.posts.store, q) })
			row(fmt.Sprintf("CPU wait p%.0f", q*100), func(p phase) float64 { return quantile(p.wakes.posts.cpu, q) })
		}
		for j, side := range all {
			fmt.Printf("%s, %.0f msg/s: goroutines started or woken per message, by the code that did it\n", filepath.Base(names[j]), rate)
			var sites []string
			for site := range side[i].wakes.by {
				sites = append(sites, site)
			}
			sort.Slice(sites, func(a, b int) bool { return side[i].wakes.by[sites[a]] > side[i].wakes.by[sites[b]] })
			for _, site := range sites {
				if n := side[i].wakes.by[site]; n >= 0.01 {
					fmt.Printf("  %7.3f %s\n", n, site)
				}
			}
		}
	}
	return nil
}

// phase is one measured rate: the system calls counted by name, their total, the server's
// context switches, CPU seconds and store commits (group commits, /metrics), and the
// messages delivered. The counts include the two /metrics scrapes of the phase (its
// commits).
type phase struct {
	counts   map[string]float64
	total    float64
	cpu      float64
	switches float64
	commits  float64
	wakes    *goroutineWakes // from the runtime trace (--trace), per message
	messages int64
}

// measure starts bin, opens the connections, warms up, and counts each rate's phase.
func measure(bin string, rates []float64, dur time.Duration, conns, publishers int, count bool, record, recordEvent, traceDir string) ([]phase, error) {
	dir, err := os.MkdirTemp("", "wspresence-syscalls-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	cpu := ""
	if runtime.NumCPU() >= 2 {
		cpu = "0"
	}
	t, err := bench.StartWspresence(bin, filepath.Join(dir, "data"), cpu)
	if err != nil {
		return nil, err
	}
	defer t.Stop()
	defer bench.ConfineLoad(t)() // as in wspresence-bench: the load generator off the server's core
	ctx := context.Background()
	fleet := bench.OpenFleet(ctx, t, conns, conns, 2000, "pub")
	defer fleet.Close()
	if n := fleet.Errors(); n > 0 {
		return nil, fmt.Errorf("%d connections failed", n)
	}
	fleet.Publish(ctx, t, rates[0], dur/2, publishers) // warm-up, not counted
	var out []phase
	for _, rate := range rates {
		stop := func() (map[string]float64, error) { return nil, nil }
		if count {
			if stop, err = countSyscalls(t.Pid(), filepath.Join(dir, "perf.txt")); err != nil {
				return nil, err
			}
		}
		var rec *exec.Cmd
		if record != "" {
			rec = exec.Command("perf", "record", "-q", "-g", "-e", recordEvent, "-p", strconv.Itoa(t.Pid()),
				"-o", filepath.Join(record, fmt.Sprintf("%s-%.0f.data", filepath.Base(bin), rate)))
			if err := rec.Start(); err != nil {
				return nil, fmt.Errorf("perf record: %w", err)
			}
			time.Sleep(time.Second)
		}
		before, _ := t.CPUSeconds()
		switches := contextSwitches(t.Pid())
		traced := make(chan error, 1)
		tracePath := filepath.Join(traceDir, fmt.Sprintf("%s-%.0f.trace", filepath.Base(bin), rate))
		traceFor := max(time.Second, dur/2).Truncate(time.Second)
		if traceDir != "" {
			go func() { traced <- saveTrace(ctx, t, traceFor, tracePath) }()
		} else {
			traced <- nil
		}
		r := fleet.Publish(ctx, t, rate, dur, publishers)
		if err := <-traced; err != nil {
			return nil, err
		}
		time.Sleep(200 * time.Millisecond) // the outcomes' commit
		after, _ := t.CPUSeconds()
		switches = contextSwitches(t.Pid()) - switches
		if rec != nil {
			_ = rec.Process.Signal(syscall.SIGINT)
			_ = rec.Wait()
		}
		counts, err := stop()
		if err != nil {
			return nil, err
		}
		var wakes *goroutineWakes
		if traceDir != "" {
			if wakes, err = countWakes(tracePath, rate*traceFor.Seconds()); err != nil {
				return nil, err
			}
		}
		p := phase{wakes: wakes, counts: counts, cpu: after - before, switches: switches, commits: r.CPU.CommitsPerMessage * float64(r.Received), messages: r.Received}
		p.total = counts["all"]
		delete(counts, "all")
		named := 0.0
		for name, n := range counts {
			if !strings.Contains(name, "(") { // the store's files are counted in their call's total
				named += n
			}
		}
		if other := p.total - named; other > 0 {
			counts["other"] = other
		}
		if p.messages == 0 {
			return nil, fmt.Errorf("no message delivered at %.0f msg/s", rate)
		}
		fmt.Fprintf(os.Stderr, "%s: %.0f msg/s: %d delivered, %.1f system calls a message\n", filepath.Base(bin), rate, p.messages, p.total/float64(p.messages))
		out = append(out, p)
	}
	return out, nil
}

// contextSwitches sums the voluntary and involuntary context switches of pid's threads (a
// thread that ended meanwhile takes its count with it).
func contextSwitches(pid int) float64 {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	n := 0.0
	for _, path := range tasks {
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.HasSuffix(k, "ctxt_switches") {
				f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
				n += f
			}
		}
	}
	return n
}

// saveTrace writes a runtime trace of the server's next d to path.
func saveTrace(ctx context.Context, t *bench.Target, d time.Duration, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/debug/pprof/trace?seconds=%d", t.Base, max(1, int(d.Seconds()))), nil)
	if err != nil {
		return err
	}
	req.Header = t.Header()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("trace: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("trace: %s", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// goroutineWakes counts, per message, the goroutines started and woken (made runnable
// from waiting) in a runtime trace, by the first frames of the code that did it outside
// the runtime and the standard library's plumbing ("(poller)" when the runtime's network
// poller or a timer did); and where the trace's POST /messages spent their time on the
// server (posts).
type goroutineWakes struct {
	started, woken float64
	by             map[string]float64
	posts          postTimes
}

// postTimes are the POST /messages of a trace, each from its request's arrival (its
// connection's goroutine made runnable by the read) to the connection's next read: the
// whole (total), the part blocked for its group commit (store), and the wait for the CPU
// once answered (cpu); sorted, in ms.
type postTimes struct{ total, store, cpu []float64 }

// quantile is q of sorted (0 when empty).
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(q*float64(len(sorted)-1))]
}

// postClock follows one connection's goroutine through a POST /messages (trace times, ns):
// arrived, blocked for the store, answered by it, running again; waiting is what its
// last wait was ("read", "submit" or "").
type postClock struct {
	arrived, blocked, answered, resumed int64
	waiting                             string
}

// waitKind names a goroutine's wait by the stack that entered it: a connection's read of
// its next request, or a POST /messages blocked for its group commit.
func waitKind(stack []string) string {
	joined := strings.Join(stack, " < ")
	switch {
	case strings.Contains(joined, "bufio.(*Reader).Peek < net/http.(*conn).serve"):
		return "read"
	case strings.Contains(joined, "(*Store).submit < ") && strings.Contains(joined, "(*Store).Enqueue"):
		return "submit"
	}
	return ""
}

// add follows a transition of the goroutine at time at, whose stack (when it starts to wait)
// is stack, and records a POST in p when its connection reads again.
func (c *postClock) add(p *postTimes, from, to string, at int64, stack []string) {
	ms := func(d int64) float64 { return float64(d) / 1e6 }
	if to == "Waiting" {
		kind := waitKind(stack)
		switch {
		case kind == "read" && c.resumed > 0:
			p.total = append(p.total, ms(at-c.arrived))
			p.store = append(p.store, ms(c.answered-c.blocked))
			p.cpu = append(p.cpu, ms(c.resumed-c.answered))
			*c = postClock{}
		case kind == "submit" && c.arrived > 0 && c.blocked == 0:
			c.blocked = at
		}
		c.waiting = kind
	}
	if from == "Waiting" && to == "Runnable" {
		switch {
		case c.waiting == "read":
			*c = postClock{arrived: at}
		case c.waiting == "submit" && c.blocked > 0 && c.answered == 0:
			c.answered = at
		}
	}
	if to == "Running" && c.answered > 0 && c.resumed == 0 {
		c.resumed = at
	}
}

var transitionRe = regexp.MustCompile(`StateTransition Time=(\d+) GoID=(\d+) (\S+)->(\S+) Reason=`)

// plumbing are the frames a waker's site skips: the runtime's and the standard library's
// (net/http's are kept: its own goroutines are part of what a request costs).
var plumbing = regexp.MustCompile(`^(runtime\.|internal/|sync\.|context\.|time\.|net\.|os\.|syscall\.)`)

// countWakes reads the trace at path (go tool trace -d=parsed) and divides by messages.
func countWakes(path string, messages float64) (*goroutineWakes, error) {
	out, err := exec.Command("go", "tool", "trace", "-d=parsed", path).Output()
	if err != nil {
		return nil, fmt.Errorf("go tool trace: %w", err)
	}
	w := &goroutineWakes{by: map[string]float64{}}
	var kind string
	var site, moved []string
	var at, goID int64
	var from, to string
	clocks := map[int64]*postClock{}
	inStack, inMoved := false, false
	flush := func() {
		if from != "" {
			c := clocks[goID]
			if c == nil {
				c = &postClock{}
				clocks[goID] = c
			}
			c.add(&w.posts, from, to, at, moved)
			from, moved = "", moved[:0]
		}
		if kind == "" {
			return
		}
		label := strings.Join(site, " < ")
		if label == "" {
			label = "(poller)"
		}
		if kind == "NotExist->Runnable" {
			w.started++
			label = "start: " + label
		} else {
			w.woken++
		}
		w.by[label]++
		kind, site = "", nil
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "M=") {
			flush()
			inStack, inMoved = false, false
			if m := transitionRe.FindStringSubmatch(line); m != nil {
				at, _ = strconv.ParseInt(m[1], 10, 64)
				goID, _ = strconv.ParseInt(m[2], 10, 64)
				from, to = m[3], m[4]
				if t := m[3] + "->" + m[4]; t == "Waiting->Runnable" || t == "NotExist->Runnable" {
					kind = t
				}
			}
			continue
		}
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(trimmed, "Stack="):
			inStack, inMoved = true, false
		case strings.HasPrefix(trimmed, "TransitionStack="):
			inStack, inMoved = false, true
		case inMoved && from != "":
			if fn, _, ok := strings.Cut(trimmed, " @ 0x"); ok {
				moved = append(moved, fn)
			}
		case inStack && kind != "" && len(site) < 2:
			if fn, _, ok := strings.Cut(trimmed, " @ 0x"); ok && !plumbing.MatchString(fn) {
				site = append(site, fn)
			}
		}
	}
	flush()
	for _, d := range [][]float64{w.posts.total, w.posts.store, w.posts.cpu} {
		sort.Float64s(d)
	}
	w.started /= messages
	w.woken /= messages
	for k := range w.by {
		w.by[k] /= messages
	}
	return w, nil
}

// storeFile is one of the store's files and the tracepoint filter matching its descriptors.
type storeFile struct{ name, filter string }

// storeFiles lists the store's files pid holds open (the database, its WAL, its shared
// memory and its high-water mark), each with the filter matching every descriptor of it.
func storeFiles(pid int) []storeFile {
	fds := map[string][]string{}
	links, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	for _, l := range links {
		target, err := os.Readlink(l)
		if err != nil {
			continue
		}
		for _, suffix := range []string{".db", ".db-wal", ".db-shm", ".db-mark"} {
			if strings.HasSuffix(target, suffix) {
				fds[suffix] = append(fds[suffix], "fd == "+filepath.Base(l))
			}
		}
	}
	var out []storeFile
	for _, suffix := range []string{".db", ".db-wal", ".db-shm", ".db-mark"} {
		if len(fds[suffix]) > 0 {
			out = append(out, storeFile{name: suffix, filter: strings.Join(fds[suffix], " || ")})
		}
	}
	return out
}

// traced are the system calls counted by name (the others are counted together): those a
// server's phase makes, each tracepoint being a cost of its own on every call.
var traced = []string{"read", "write", "pread64", "pwrite64", "fsync", "fdatasync", "fcntl", "futex",
	"epoll_pwait", "epoll_ctl", "nanosleep", "sched_yield", "newfstatat", "newfstat", "openat", "close",
	"getrandom", "clock_gettime", "madvise", "mmap", "munmap", "accept4", "setsockopt", "getsockname",
	"tgkill", "rt_sigreturn", "ftruncate", "writev", "sendmsg", "recvfrom"}

// countSyscalls starts perf stat on every thread of pid, counting each system call's
// entries; stop ends it and returns the counts by call name.
func countSyscalls(pid int, out string) (stop func() (map[string]float64, error), err error) {
	var events []string
	for _, name := range traced {
		events = append(events, "syscalls:sys_enter_"+name)
	}
	events = append(events, "raw_syscalls:sys_enter")
	args := []string{"stat", "-x", ",", "-o", out, "-e", strings.Join(events, ",")}
	// The store's files, each counted apart: which file a write or a lock is for.
	var labels []string
	for _, file := range storeFiles(pid) {
		for _, call := range []string{"pwrite64", "pread64", "fcntl", "fsync"} {
			args = append(args, "-e", "syscalls:sys_enter_"+call, "--filter", file.filter)
			labels = append(labels, call+" ("+file.name+")")
		}
	}
	cmd := exec.Command("perf", append(args, "-p", strconv.Itoa(pid))...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("perf stat: %w", err)
	}
	time.Sleep(time.Second) // perf attaches to every tracepoint of every thread
	return func() (map[string]float64, error) {
		_ = cmd.Process.Signal(syscall.SIGINT)
		if err := cmd.Wait(); err != nil && !strings.Contains(err.Error(), "interrupt") {
			return nil, fmt.Errorf("perf stat: %w: %s", err, stderr.String())
		}
		f, err := os.Open(out)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		counts := map[string]float64{}
		sc := bufio.NewScanner(f)
		line := 0
		for sc.Scan() {
			// value,unit,event,...: the named events first, in the order given, then the
			// filtered ones.
			fields := strings.Split(sc.Text(), ",")
			if len(fields) < 3 || !strings.Contains(fields[2], "sys_enter") {
				continue
			}
			line++
			if i := line - len(events) - 1; i >= 0 {
				if i < len(labels) {
					if v, err := strconv.ParseFloat(fields[0], 64); err == nil && v > 0 {
						counts[labels[i]] += v
					}
				}
				continue
			}
			name, ok := strings.CutPrefix(fields[2], "syscalls:sys_enter_")
			if fields[2] == "raw_syscalls:sys_enter" {
				name, ok = "all", true
			}
			if !ok {
				continue
			}
			if v, err := strconv.ParseFloat(fields[0], 64); err == nil && v > 0 {
				counts[name] += v
			}
		}
		return counts, sc.Err()
	}, nil
}
