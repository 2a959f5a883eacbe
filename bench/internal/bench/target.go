package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Target is a server under test, running in its own process.
type Target struct {
	Name   string
	Base   string // http://addr
	cmd    *exec.Cmd
	key    string
	secret []byte
	mu     sync.Mutex
	tokens map[string]string
	// baseline targets use ?user=, push to /push and read /online; durable ones (a
	// baseline with a group-committed log) also count their commits at /commits.
	baseline, durable bool
	// Dir is a wspresence target's data directory (its store); bin, cpu and args start it
	// again on it (Restart).
	Dir       string
	bin, cpu  string
	extraArgs []string
	// Started is when the process started; Ready how long it took to serve (/healthz 200).
	Started time.Time
	Ready   time.Duration
}

var listenRe = regexp.MustCompile(`listening on (\S+)`)

// pinned prefixes a command with taskset to pin it to cpu, when taskset exists.
func pinned(cpu string, name string, args ...string) *exec.Cmd {
	if cpu != "" {
		if ts, err := exec.LookPath("taskset"); err == nil {
			return exec.Command(ts, append([]string{"-c", cpu, name}, args...)...)
		}
	}
	return exec.Command(name, args...)
}

// randomHex returns n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// StartWspresence starts `bin serve` on data dir dir, pinned to cpu (unpinned if empty),
// with a JWT secret and an API key of the benchmark's own; extra are more serve flags.
func StartWspresence(bin, dir, cpu string, extra ...string) (*Target, error) {
	t := &Target{Name: "wspresence", tokens: map[string]string{}, key: randomHex(24), Dir: dir, bin: bin, cpu: cpu, extraArgs: extra}
	t.secret = []byte(randomHex(32))
	return t, t.startServe()
}

func (t *Target) startServe() error {
	t.cmd = pinned(t.cpu, t.bin, append([]string{"serve", "--addr", "127.0.0.1:0", "--data", t.Dir, "--offline-grace", "1s",
		"--jwt-secret", string(t.secret), "--api-key", t.key,
		"--log-level", "error", "--pprof", "--max-connections-per-user", "100", "--inbound-rate", "1000", "--inbound-burst", "1000"},
		t.extraArgs...)...)
	t.Base = ""
	if err := t.start(func(line string) bool { return strings.Contains(line, "Sample token") }); err != nil {
		return err
	}
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		resp, err := http.Get(t.Base + "/healthz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Ready = time.Since(t.Started)
				return nil
			}
		}
	}
	return fmt.Errorf("%s: /healthz did not answer 200 within a minute", t.Name)
}

// Restart stops the server and starts it again on the same store; t.Ready is then how
// long the new process took from its start until it served.
func (t *Target) Restart() error {
	t.Stop()
	return t.startServe()
}

// ServeFlags returns the flags `bin serve -h` lists (a build may predate some).
func ServeFlags(bin string) map[string]bool {
	out, _ := exec.Command(bin, "serve", "-h").CombinedOutput()
	flags := map[string]bool{}
	for _, m := range flagRe.FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = true
	}
	return flags
}

var flagRe = regexp.MustCompile(`(?m)^\s+--([a-z0-9-]+)`)

// StartBaseline starts `self baseline-server`, pinned to cpu.
func StartBaseline(self, cpu string) (*Target, error) {
	cmd := pinned(cpu, self, "baseline-server", "--addr", "127.0.0.1:0")
	t := &Target{Name: "baseline", cmd: cmd, cpu: cpu, baseline: true}
	return t, t.start(func(string) bool { return true })
}

// StartDurableBaseline starts `self baseline-server` pinned to cpu, durable: its log in
// dir, each group commit held for hold (see BaselineOptions).
func StartDurableBaseline(self, dir, cpu string, hold time.Duration) (*Target, error) {
	cmd := pinned(cpu, self, "baseline-server", "--addr", "127.0.0.1:0",
		"--log", filepath.Join(dir, "log"), "--hold", hold.String())
	t := &Target{Name: "durable baseline, hold " + hold.String(), cmd: cmd, cpu: cpu, baseline: true, durable: true}
	return t, t.start(func(string) bool { return true })
}

func (t *Target) start(ready func(string) bool) error {
	out, err := t.cmd.StdoutPipe()
	if err != nil {
		return err
	}
	t.cmd.Stderr = os.Stderr
	t.Started = time.Now()
	if err := t.cmd.Start(); err != nil {
		return err
	}
	sc := bufio.NewScanner(out)
	timer := time.AfterFunc(30*time.Second, func() { _ = t.cmd.Process.Kill() })
	defer timer.Stop()
	for sc.Scan() {
		if m := listenRe.FindStringSubmatch(sc.Text()); m != nil {
			t.Base = "http://" + m[1]
		}
		if t.Base != "" && ready(sc.Text()) {
			go func() { _, _ = io.Copy(io.Discard, out) }()
			return nil
		}
	}
	return fmt.Errorf("%s did not start", t.Name)
}

// Pid is the server process's id.
func (t *Target) Pid() int { return t.cmd.Process.Pid }

// Stop ends the process.
func (t *Target) Stop() {
	_ = t.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = t.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = t.cmd.Process.Kill()
	}
}

// WebSocketURL is where user connects.
func (t *Target) WebSocketURL(user string) string {
	ws := "ws" + strings.TrimPrefix(t.Base, "http")
	if t.baseline {
		return ws + "/?user=" + user
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	tok, ok := t.tokens[user]
	if !ok {
		tok = t.token(user)
		t.tokens[user] = tok
	}
	return ws + "/?Authorization=" + tok
}

// VisitURL is WebSocketURL with a token signed for this connect alone, not kept (a user
// who visits once).
func (t *Target) VisitURL(user string) string {
	if t.baseline {
		return t.WebSocketURL(user)
	}
	return "ws" + strings.TrimPrefix(t.Base, "http") + "/?Authorization=" + t.token(user)
}

func (t *Target) token(user string) string {
	now := time.Now()
	tok, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"userId": user, "iat": now.Unix(), "exp": now.Add(24 * time.Hour).Unix()}).SignedString(t.secret)
	return tok
}

// PushRequest builds the request that enqueues body (a JSON array of messages).
func (t *Target) PushRequest(ctx context.Context, body []byte) *http.Request {
	path := "/messages"
	if t.baseline {
		path = "/push"
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, t.Base+path, strings.NewReader(string(body)))
	req.Header.Set("Content-Type", "application/json")
	t.authorize(req)
	return req
}

// OnlineURL is the status query of ids.
func (t *Target) OnlineURL(ids []string) string {
	if t.baseline {
		return t.Base + "/online?userIds=" + strings.Join(ids, ",")
	}
	return t.Base + "/user/online?userIds=" + strings.Join(ids, ",")
}

func (t *Target) authorize(req *http.Request) {
	if !t.baseline {
		req.Header.Set("X-Api-Key", t.key)
	}
}

// Header is the auth header of backend calls.
func (t *Target) Header() http.Header {
	h := http.Header{}
	if !t.baseline {
		h.Set("X-Api-Key", t.key)
	}
	return h
}

// CollectGarbage asks the server to collect garbage (for memory figures).
func (t *Target) CollectGarbage(ctx context.Context) {
	url := t.Base + "/gc"
	if !t.baseline {
		url = t.Base + "/debug/pprof/heap?gc=1"
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	t.authorize(req)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// RSS returns the server process's resident set size in bytes.
func (t *Target) RSS() (int64, error) {
	pid := t.cmd.Process.Pid
	// Under taskset the server is the child the exec replaced: same pid.
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for %d", pid)
}

// clockTicks is the unit of the CPU times in /proc/<pid>/stat (USER_HZ, 100 on Linux).
const clockTicks = 100

// CPUSeconds returns the CPU time the server process has used so far, user plus system,
// in seconds (utime + stime of /proc/<pid>/stat, every thread counted).
func (t *Target) CPUSeconds() (float64, error) { return ProcessCPUSeconds(t.cmd.Process.Pid) }

// ProcessCPUSeconds is process pid's user + system time, from /proc/<pid>/stat.
func ProcessCPUSeconds(pid int) (float64, error) {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces: the fields follow its last ')'.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 (state): utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q, stime %q", pid, f[11], f[12])
	}
	return float64(utime+stime) / clockTicks, nil
}

// cpuMeter measures the server's CPU time over a scenario.
type cpuMeter struct {
	t     *Target
	start float64
	ok    bool
}

func (t *Target) meterCPU() cpuMeter {
	s, err := t.CPUSeconds()
	return cpuMeter{t: t, start: s, ok: err == nil}
}

// stop returns the CPU seconds used since the meter started (0 if /proc cannot tell).
func (m cpuMeter) stop() float64 {
	end, err := m.t.CPUSeconds()
	if err != nil || !m.ok {
		return 0
	}
	return end - m.start
}

// Commits returns how many group commits the server's store has made (the count of
// wspresence_store_commit_batch_size in /metrics, a durable baseline's /commits); 0 for
// the baseline, or when unknown.
func (t *Target) Commits(ctx context.Context) float64 {
	if t.durable {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, t.Base+"/commits", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0
		}
		defer resp.Body.Close()
		var n float64
		_, _ = fmt.Fscan(resp.Body, &n)
		return n
	}
	if t.baseline {
		return 0
	}
	v, _ := t.Metric(ctx, "wspresence_store_commit_batch_size_count")
	return v
}

// Metric returns the value of an unlabelled series of the server's /metrics (ok false
// when it is absent or the server did not answer).
func (t *Target) Metric(ctx context.Context, name string) (float64, bool) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, t.Base+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return n, err == nil
		}
	}
	return 0, false
}

// Buckets is a Prometheus histogram's cumulative buckets: each upper bound (le, +Inf last)
// with the observations at or below it.
type Buckets []Bucket

// Bucket is one cumulative bucket of a histogram.
type Bucket struct {
	LE    float64
	Count float64
}

// Histogram returns the buckets of an unlabelled histogram of the server's /metrics (nil
// when it is absent, for the baseline, or when the server did not answer).
func (t *Target) Histogram(ctx context.Context, name string) Buckets {
	if t.baseline {
		return nil
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, t.Base+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var out Buckets
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), name+`_bucket{le="`)
		if !ok {
			continue
		}
		le, count, ok := strings.Cut(rest, `"} `)
		if !ok {
			continue
		}
		b := Bucket{LE: math.Inf(1)}
		if le != "+Inf" {
			if b.LE, err = strconv.ParseFloat(le, 64); err != nil {
				continue
			}
		}
		if b.Count, err = strconv.ParseFloat(strings.TrimSpace(count), 64); err == nil {
			out = append(out, b)
		}
	}
	return out
}

// Since returns the observations made between before and h (the same histogram, scraped
// twice): each bucket's count less before's.
func (h Buckets) Since(before Buckets) Buckets {
	if len(before) != len(h) {
		return h
	}
	out := make(Buckets, len(h))
	for i := range h {
		out[i] = Bucket{LE: h[i].LE, Count: h[i].Count - before[i].Count}
	}
	return out
}

// Add returns the sum of two histograms with the same buckets (h when o is nil).
func (h Buckets) Add(o Buckets) Buckets {
	if len(h) == 0 {
		return o
	}
	if len(o) != len(h) {
		return h
	}
	out := make(Buckets, len(h))
	for i := range h {
		out[i] = Bucket{LE: h[i].LE, Count: h[i].Count + o[i].Count}
	}
	return out
}

// Quantile estimates the q-quantile of the observations, in the unit of the bounds, as
// Prometheus's histogram_quantile does: linearly within the bucket that holds it (the
// first bucket's lower bound 0; the last finite bound when it falls in +Inf). NaN when
// there are none.
func (h Buckets) Quantile(q float64) float64 {
	if len(h) == 0 || h[len(h)-1].Count <= 0 {
		return math.NaN()
	}
	rank := q * h[len(h)-1].Count
	lo, below := 0.0, 0.0
	for _, b := range h {
		if b.Count >= rank {
			if math.IsInf(b.LE, 1) {
				return lo
			}
			if b.Count == below {
				return b.LE
			}
			return lo + (b.LE-lo)*(rank-below)/(b.Count-below)
		}
		lo, below = b.LE, b.Count
	}
	return lo
}

// StoreBytes is the size of the store's files in the data directory: the database and
// its write-ahead log (and the WAL alone).
func (t *Target) StoreBytes() (total, wal int64) {
	for _, f := range []string{"wspresence.db", "wspresence.db-wal"} {
		if fi, err := os.Stat(filepath.Join(t.Dir, f)); err == nil {
			total += fi.Size()
			if strings.HasSuffix(f, "-wal") {
				wal = fi.Size()
			}
		}
	}
	return total, wal
}

// save writes what the server answers at path (a pprof endpoint) to dir/file.
func (t *Target) save(ctx context.Context, dir, path, file string) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, t.Base+path, nil)
	t.authorize(req)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	f, err := os.Create(filepath.Join(dir, file))
	if err != nil {
		return "", err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return f.Name(), err
}

// IdleHeap saves a heap profile (after a collection) into dir (wspresence only).
func (t *Target) IdleHeap(ctx context.Context, dir string) (string, error) {
	if t.baseline || dir == "" {
		return "", nil
	}
	return t.save(ctx, dir, "/debug/pprof/heap?gc=1", "heap-idle.pprof")
}

// Profile saves a CPU profile of seconds and a heap profile into dir (wspresence only).
func (t *Target) Profile(ctx context.Context, dir string, seconds int) (cpu, heap string, err error) {
	if t.baseline {
		return "", "", nil
	}
	get := func(path, file string) (string, error) { return t.save(ctx, dir, path, file) }
	if cpu, err = get(fmt.Sprintf("/debug/pprof/profile?seconds=%d", seconds), "cpu.pprof"); err != nil {
		return "", "", err
	}
	heap, err = get("/debug/pprof/heap", "heap.pprof")
	return cpu, heap, err
}
