package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// FloodResult is the flood scenario: Requests concurrent POST /messages of BodyBytes each
// (far over the body budget together), and the latency of /healthz and of a WebSocket
// connect sampled without the flood, then during it (wspresence only).
type FloodResult struct {
	Requests  int `json:"requests"`
	BodyBytes int `json:"body_bytes"`
	// Answers by status: 202, 400 request_too_large, 503, any other; Failed ended without
	// an answer.
	Accepted    int `json:"accepted"`
	TooLarge    int `json:"refused_too_large"`
	Unavailable int `json:"refused_503"`
	Other       int `json:"other_status"`
	Failed      int `json:"failed"`
	// FailedWith is the error of one request that ended without an answer.
	FailedWith string `json:"failed_with,omitempty"`
	// Seconds is how long the flood took, until its last request ended.
	Seconds float64 `json:"seconds"`
	// RefusedAnswer is how long a refused request waited for its answer; RefusedSentShare
	// the share of its body the client had handed to the connection by then (on average).
	RefusedAnswer    Latency `json:"refused_answer"`
	RefusedSentShare float64 `json:"refused_sent_share"`
	// Health and Connect without the flood (Idle) and during it.
	HealthIdle   Latency `json:"healthz_idle"`
	HealthFlood  Latency `json:"healthz_flood"`
	ConnectIdle  Latency `json:"connect_idle"`
	ConnectFlood Latency `json:"connect_flood"`
	ProbeErrors  int     `json:"probe_errors"`
	// PeakRSSMiB is the server's largest RSS sampled during the flood; CPUSeconds its CPU
	// time over it, ClientCPUSeconds the load generator's (sending the bodies: on loopback
	// the kernel's copy of every byte sent is counted there).
	PeakRSSMiB       float64 `json:"peak_rss_mib"`
	CPUSeconds       float64 `json:"server_cpu_s"`
	ClientCPUSeconds float64 `json:"client_cpu_s"`
	// ClientCPU is the CPUs the load generator was confined to during the flood (empty:
	// all), away from the server's.
	ClientCPU string `json:"client_cpus,omitempty"`
}

// ConfineSelf restricts every thread of this process to cpus (taskset), and returns the
// function that gives them all CPUs back; a no-op where taskset is missing.
func ConfineSelf(cpus string) func() {
	ts, err := exec.LookPath("taskset")
	if err != nil || cpus == "" {
		return func() {}
	}
	pid := strconv.Itoa(os.Getpid())
	if exec.Command(ts, "-a", "-cp", cpus, pid).Run() != nil {
		return func() {}
	}
	return func() { _ = exec.Command(ts, "-a", "-cp", fmt.Sprintf("0-%d", runtime.NumCPU()-1), pid).Run() }
}

// probe samples /healthz (a new connection each time) and a WebSocket connect of a new
// user, each started every 50 ms whatever the earlier ones do (a stall shows in every sample
// it holds up), until the returned function is called; it waits for the samples started.
func probe(ctx context.Context, t *Target, prefix string) func() (health, connect []time.Duration, errs int) {
	var hRec, cRec recorder
	var errors atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	health := func() error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, t.Base+"/healthz", nil)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("healthz: %d", resp.StatusCode)
		}
		return nil
	}
	var n atomic.Int64
	connect := func() error {
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(dctx, t.VisitURL(fmt.Sprintf("%s-%d", prefix, n.Add(1))), nil)
		if err != nil {
			return err
		}
		c.CloseNow()
		return nil
	}
	sample := func(fn func() error, rec *recorder) {
		defer wg.Done()
		start := time.Now()
		if err := fn(); err != nil {
			errors.Add(1)
			return
		}
		rec.add(time.Since(start))
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			wg.Add(2)
			go sample(health, &hRec)
			go sample(connect, &cRec)
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	return func() ([]time.Duration, []time.Duration, int) {
		close(stop)
		wg.Wait()
		return hRec.take(), cRec.take(), int(errors.Load())
	}
}

// probeSamples is what a probe process writes when told to stop (see ProbeMain).
type probeSamples struct {
	Health  []time.Duration `json:"health"`
	Connect []time.Duration `json:"connect"`
	Errors  int             `json:"errors"`
}

// ProbeMain is `wspresence-bench probe`: it runs probe against the server at base (its
// connect tokens signed with secret, users named after prefix) until in is closed, then
// writes the samples to out as JSON. A process of its own, the probes share neither CPU
// time nor connections with the load generator's goroutines.
func ProbeMain(ctx context.Context, base, secret, prefix string, in io.Reader, out io.Writer) error {
	t := &Target{Name: "wspresence", Base: base, secret: []byte(secret), tokens: map[string]string{}}
	stop := probe(ctx, t, prefix)
	_, _ = io.Copy(io.Discard, in)
	h, c, errs := stop()
	return json.NewEncoder(out).Encode(probeSamples{Health: h, Connect: c, Errors: errs})
}

// probeProcess starts `self probe` against t, pinned to cpus (all if empty), and returns
// the function that stops it and reads its samples (where the process cannot be started,
// the probes run in this one).
func probeProcess(ctx context.Context, t *Target, prefix, cpus string) func() (health, connect []time.Duration, errs int) {
	self, err := os.Executable()
	if err != nil {
		return probe(ctx, t, prefix)
	}
	cmd := pinned(cpus, self, "probe", "--base", t.Base, "--secret", string(t.secret), "--prefix", prefix)
	stdin, err1 := cmd.StdinPipe()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	if err1 != nil || cmd.Start() != nil {
		return probe(ctx, t, prefix)
	}
	return func() ([]time.Duration, []time.Duration, int) {
		_ = stdin.Close()
		if err := cmd.Wait(); err != nil {
			return nil, nil, 1
		}
		var s probeSamples
		if err := json.Unmarshal(out.Bytes(), &s); err != nil {
			return nil, nil, 1
		}
		return s.Health, s.Connect, s.Errors
	}
}

// countingReader counts the bytes read from it.
type countingReader struct {
	r *bytes.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// floodBody is a valid POST /messages body of about size bytes: messages of 120,000
// characters to user.
func floodBody(user string, size int) []byte {
	type msg struct {
		UserID string `json:"UserId"`
		Body   string `json:"Body"`
	}
	var msgs []msg
	for left := size; left > 64; left -= 120_064 {
		msgs = append(msgs, msg{UserID: user, Body: strings.Repeat("x", min(120_000, left-64))})
	}
	body, _ := json.Marshal(msgs)
	return body
}

// Flood runs the flood scenario: idle probes for idle, then requests concurrent POSTs of
// bodyBytes each with the probes running. If profileDir is set the server's CPU is
// profiled over the flood (a pass not to report: the profiler costs CPU). The caller keeps
// this program to clientCPUs (Run does, for the whole side); the probe process is pinned there.
func Flood(ctx context.Context, t *Target, requests, bodyBytes int, idle time.Duration, clientCPUs, profileDir string) (FloodResult, string) {
	res := FloodResult{Requests: requests, BodyBytes: bodyBytes, ClientCPU: clientCPUs}
	stopProbe := probeProcess(ctx, t, "probe-idle", clientCPUs)
	time.Sleep(idle)
	h, c, e := stopProbe()
	res.HealthIdle, res.ConnectIdle, res.ProbeErrors = summarize(h), summarize(c), e

	body := floodBody("flood-user", bodyBytes)
	res.BodyBytes = len(body)
	client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: requests, DisableKeepAlives: true}}
	var rssPeak atomic.Int64
	stopRSS := make(chan struct{})
	rssDone := make(chan struct{})
	go func() {
		defer close(rssDone)
		for {
			if rss, err := t.RSS(); err == nil && rss > rssPeak.Load() {
				rssPeak.Store(rss)
			}
			select {
			case <-stopRSS:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	profiled := make(chan string, 1)
	if profileDir != "" {
		go func() {
			cpu, _, err := t.Profile(ctx, profileDir, 3)
			if err != nil {
				cpu = ""
			}
			profiled <- cpu
		}()
		time.Sleep(100 * time.Millisecond)
	} else {
		profiled <- ""
	}
	cpu := t.meterCPU()
	self, _ := selfCPU()
	stopProbe = probeProcess(ctx, t, "probe-flood", clientCPUs)
	var mu sync.Mutex
	var refused recorder
	var sentShare float64
	var wg sync.WaitGroup
	start := time.Now()
	for range requests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &countingReader{r: bytes.NewReader(body)}
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, t.Base+"/messages", r)
			req.ContentLength = int64(len(body))
			req.Header.Set("Content-Type", "application/json")
			t.authorize(req)
			sent := time.Now()
			resp, err := client.Do(req)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.Failed++
				res.FailedWith = err.Error()
				return
			}
			share := float64(r.n.Load()) / float64(len(body))
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			switch resp.StatusCode {
			case http.StatusAccepted:
				res.Accepted++
				return
			case http.StatusBadRequest:
				res.TooLarge++
			case http.StatusServiceUnavailable:
				res.Unavailable++
			default:
				res.Other++
				return
			}
			refused.add(time.Since(sent))
			sentShare += share
		}()
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	// Probe a little past the flood's end: the accepted bodies are still being written.
	time.Sleep(200 * time.Millisecond)
	h, c, e = stopProbe()
	res.HealthFlood, res.ConnectFlood, res.ProbeErrors = summarize(h), summarize(c), res.ProbeErrors+e
	res.CPUSeconds = cpu.stop()
	if end, err := selfCPU(); err == nil {
		res.ClientCPUSeconds = end - self
	}
	close(stopRSS)
	<-rssDone
	res.PeakRSSMiB = float64(rssPeak.Load()) / (1 << 20)
	if n := res.TooLarge + res.Unavailable; n > 0 {
		res.RefusedSentShare = sentShare / float64(n)
	}
	res.RefusedAnswer = summarize(refused.take())
	return res, <-profiled
}
