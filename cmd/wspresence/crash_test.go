package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/auth"
	"github.com/wspresence/wspresence/internal/localrt"
	"github.com/wspresence/wspresence/internal/store/sqlite"
)

// TestMain lets the crash test run this test binary as the real command in a child
// process (WSPRESENCE_RUN_MAIN=1, arguments in WSPRESENCE_MAIN_ARGS).
func TestMain(m *testing.M) {
	if os.Getenv("WSPRESENCE_RUN_MAIN") == "1" {
		os.Args = append([]string{"wspresence"}, strings.Fields(os.Getenv("WSPRESENCE_MAIN_ARGS"))...)
		main()
		return
	}
	os.Exit(m.Run())
}

const crashGrace = 300 * time.Millisecond

// child is `wspresence serve` running in another process.
type child struct {
	cmd  *exec.Cmd
	addr string
	key  string
	logs *strings.Builder
	mu   *sync.Mutex
}

var listenRe = regexp.MustCompile(`listening on (127\.0\.0\.1:\d+)`)

func startChild(t *testing.T, dir string, extra ...string) *child {
	t.Helper()
	cmd := childCommand(dir, extra...)
	stdout, _ := cmd.StdoutPipe()
	c := &child{cmd: cmd, logs: &strings.Builder{}, mu: &sync.Mutex{}}
	cmd.Stderr = writerFunc(func(p []byte) (int, error) { c.mu.Lock(); defer c.mu.Unlock(); return c.logs.Write(p) })
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	deadline := time.AfterFunc(20*time.Second, func() { _ = cmd.Process.Kill() })
	defer deadline.Stop()
	for sc.Scan() {
		if m := listenRe.FindStringSubmatch(sc.Text()); m != nil {
			c.addr = m[1]
		}
		if strings.Contains(sc.Text(), "Sample token") {
			break
		}
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	if c.addr == "" {
		t.Fatalf("the server did not start: %s", c.logs.String())
	}
	key, err := localrt.ReadSecret(dir, localrt.APIKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	c.key = key
	return c
}

// childCommand is `wspresence serve` on dir in another process, with extra flags.
func childCommand(dir string, extra ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "WSPRESENCE_RUN_MAIN=1",
		"WSPRESENCE_MAIN_ARGS=serve --addr 127.0.0.1:0 --data "+dir+" --offline-grace "+crashGrace.String()+" --log-level warn "+strings.Join(extra, " "))
	return cmd
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func (c *child) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	_ = c.cmd.Process.Signal(sig)
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = c.cmd.Process.Kill()
		t.Fatalf("the server did not stop on %v", sig)
	}
}

// load is what the clients saw before the crash.
type load struct {
	mu       sync.Mutex
	dials    map[string]int             // successful WebSocket upgrades per user
	accepted map[string][]string        // message ids answered 202, per user
	received map[string]map[string]bool // message ids a client of the user read, per user
	readers  sync.WaitGroup             // every connection's reader, until its EOF
}

// slowUsers read slowly (15 ms a frame) and get 60 KB bodies: frames pile up in their send
// queues, so a kill finds frames queued but not written.
var slowUsers = map[string]bool{"u3": true, "u4": true}

// readingUsers never close a connection themselves: their clients read every frame until the
// kill ends the connection, so every message reported delivered to them must have been read.
// (A client that closes its own connection discards the frames that arrive during the close
// handshake: written to it, but not read.)
var readingUsers = map[string]bool{"u3": true, "u4": true, "u5": true}

func drive(ctx context.Context, c *child, secret []byte, rng *rand.Rand, users []string) *load {
	l := &load{dials: map[string]int{}, accepted: map[string][]string{}, received: map[string]map[string]bool{}}
	var wg sync.WaitGroup
	for i, u := range users {
		seed := rng.Uint64()
		l.received[u] = map[string]bool{}
		wg.Add(2)
		go func() { // connections churning
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, 1))
			tok, _ := auth.Mint(secret, u, time.Hour, time.Now())
			for ctx.Err() == nil {
				dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				conn, _, err := websocket.Dial(dctx, "ws://"+c.addr+"/?Authorization="+tok, nil)
				cancel()
				if err != nil {
					time.Sleep(10 * time.Millisecond) // at the connection cap, or cut off
					continue
				}
				conn.SetReadLimit(1 << 20)
				l.mu.Lock()
				l.dials[u]++
				l.mu.Unlock()
				l.readers.Add(1)
				go func() { // every frame, until the connection ends
					defer l.readers.Done()
					for {
						_, data, err := conn.Read(context.Background())
						if err != nil {
							return
						}
						id, _, _ := strings.Cut(string(data), " ")
						l.mu.Lock()
						l.received[u][id] = true
						l.mu.Unlock()
						if slowUsers[u] {
							time.Sleep(15 * time.Millisecond)
						}
					}
				}()
				time.Sleep(time.Duration(r.IntN(40)) * time.Millisecond)
				if readingUsers[u] {
					// Keep reading until the kill; open another connection after a while.
					select {
					case <-ctx.Done():
					case <-time.After(time.Duration(50+r.IntN(200)) * time.Millisecond):
					}
					continue
				}
				if r.IntN(3) > 0 {
					_ = conn.Close(websocket.StatusNormalClosure, "")
				}
			}
		}()
		go func() { // messages
			defer wg.Done()
			pad := "x"
			if slowUsers[u] {
				pad = strings.Repeat("x", 60*1024)
			}
			for n := 0; ctx.Err() == nil; n++ {
				id := fmt.Sprintf("m-%d-%d", i, n)
				body := fmt.Sprintf(`{"UserId":%q,"MessageId":%q,"Body":"%s %s"}`, u, id, id, pad)
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+c.addr+"/messages", strings.NewReader(body))
				req.Header.Set("X-Api-Key", c.key)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusAccepted {
					l.mu.Lock()
					l.accepted[u] = append(l.accepted[u], id)
					l.mu.Unlock()
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	<-ctx.Done()
	wg.Wait()
	return l
}

// outbox reads every published event the server kept.
func outbox(t *testing.T, c *child) []events.Envelope {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.addr+"/events?after=0", nil)
	req.Header.Set("X-Api-Key", c.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []events.Envelope
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			var env events.Envelope
			if err := json.Unmarshal([]byte(data), &env); err != nil {
				t.Fatal(err)
			}
			out = append(out, env)
		}
	}
	return out // ends when the context's deadline closes the stream
}

type detail struct {
	UserID    string `json:"userId"`
	MessageID string `json:"messageId"`
}

// TestCrashSafety kills the server with SIGKILL at random points under load, restarts it on
// the same data dir, and checks that nothing acknowledged was lost and that every message
// reported delivered was received: clients read every frame until their connection's EOF,
// and two users are slow readers of 60 KB bodies. WSPRESENCE_CRASH_RUNS
// sets the number of runs (default 20); each run logs its seed.
func TestCrashSafety(t *testing.T) {
	runs := 20
	if v, err := strconv.Atoi(os.Getenv("WSPRESENCE_CRASH_RUNS")); err == nil && v > 0 {
		runs = v
	}
	seed := uint64(time.Now().UnixNano())
	if v, err := strconv.ParseUint(os.Getenv("WSPRESENCE_CRASH_SEED"), 10, 64); err == nil {
		seed = v
	}
	var totalMessages, totalDials, lost, totalDelivered, falseDeliveries atomic.Int64
	// The runs go in pairs (go test's -parallel): each has its own data dir and server
	// process, and half of a run is waiting for the server to start and the grace to pass.
	t.Run("runs", func(t *testing.T) {
		for run := range runs {
			crashRun(t, seed+uint64(run), run, &totalMessages, &totalDials, &lost, &totalDelivered, &falseDeliveries)
		}
	})
	t.Logf("crash safety: %d runs, %d kills, %d connections and %d messages acknowledged, lost %d; %d reported delivered, %d of them not received",
		runs, runs, totalDials.Load(), totalMessages.Load(), lost.Load(), totalDelivered.Load(), falseDeliveries.Load())
}

// crashRun is one of TestCrashSafety's runs, seeded with runSeed, as a parallel subtest;
// it adds its figures to the totals.
func crashRun(t *testing.T, runSeed uint64, run int, totalMessages, totalDials, lost, totalDelivered, falseDeliveries *atomic.Int64) {
	t.Run(fmt.Sprintf("run-%02d-seed-%d", run, runSeed), func(t *testing.T) {
		t.Parallel()
		rng := rand.New(rand.NewPCG(runSeed, 7))
		dir := t.TempDir()
		a := startChild(t, dir)
		secretText, err := localrt.ReadSecret(dir, localrt.JWTSecretFile)
		if err != nil {
			t.Fatal(err)
		}
		users := []string{"u0", "u1", "u2", "u3", "u4", "u5"}
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(100+rng.IntN(500))*time.Millisecond)
		var l *load
		done := make(chan struct{})
		go func() { l = drive(ctx, a, []byte(secretText), rng, users); close(done) }()
		<-ctx.Done()
		a.stop(t, syscall.SIGKILL) // mid-flight: requests, upgrades and writes are cut off
		cancel()
		<-done
		// Every client reads what reached it, until its connection's EOF.
		readersDone := make(chan struct{})
		go func() { l.readers.Wait(); close(readersDone) }()
		select {
		case <-readersDone:
		case <-time.After(10 * time.Second):
			t.Fatal("clients still reading 10 s after the kill")
		}

		b := startChild(t, dir)
		// Every message answered 202 gets an outcome; UserOffline settles everyone.
		var envs []events.Envelope
		deadline := time.Now().Add(15 * time.Second)
		for {
			envs = outbox(t, b)
			missing := missingOutcomes(l, envs)
			if missing == 0 && allOffline(envs) {
				break
			}
			if time.Now().After(deadline) {
				lost.Add(int64(missing))
				t.Fatalf("after restart: %d accepted messages without an outcome; transitions settled %v", missing, allOffline(envs))
			}
			time.Sleep(100 * time.Millisecond)
		}
		checkTransitions(t, envs)
		// Nothing reported delivered that no client received: MessageDelivered is
		// recorded once the frame is written, never when it is merely queued.
		delivered := 0
		for _, env := range envs {
			if env.DetailType != events.DetailMessageDelivered {
				continue
			}
			delivered++
			var d detail
			_ = json.Unmarshal(env.Detail, &d)
			if readingUsers[d.UserID] && !l.received[d.UserID][d.MessageID] {
				falseDeliveries.Add(1)
				t.Errorf("%s: message %s reported delivered, but no client of the user received it", d.UserID, d.MessageID)
			}
		}
		totalDelivered.Add(int64(delivered))
		b.stop(t, syscall.SIGTERM)

		st, err := sqlite.Open(context.Background(), filepath.Join(dir, localrt.StoreFile), sqlite.Options{Grace: crashGrace})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		log, err := st.Log(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		opened := map[string]int{}
		open := map[string]bool{}
		for _, e := range log {
			switch e.Type {
			case events.TypeConnectionOpened:
				opened[e.UserID]++
				open[e.ConnectionID] = true
			case events.TypeConnectionClosed:
				delete(open, e.ConnectionID)
			}
		}
		for u, n := range l.dials {
			if opened[u] < n {
				lost.Add(int64(n - opened[u]))
				t.Errorf("%s: %d connections were accepted but only %d opens are in the log", u, n, opened[u])
			}
		}
		if len(open) != 0 {
			t.Errorf("%d connections never closed", len(open))
		}
		live, _ := st.Dump(context.Background())
		if _, err := st.Rebuild(context.Background()); err != nil {
			t.Fatal(err)
		}
		rebuilt, _ := st.Dump(context.Background())
		if !reflect.DeepEqual(live, rebuilt) {
			t.Errorf("the view differs from a rebuild of the log")
		}
		var msgs int
		for _, ids := range l.accepted {
			msgs += len(ids)
		}
		var dials int
		for _, n := range l.dials {
			dials += n
		}
		totalMessages.Add(int64(msgs))
		totalDials.Add(int64(dials))
		t.Logf("seed %d: %d connections and %d messages accepted before SIGKILL, %d events in the log", runSeed, dials, msgs, len(log))
	})
}

func missingOutcomes(l *load, envs []events.Envelope) int {
	got := map[string]bool{}
	for _, env := range envs {
		if env.DetailType == events.DetailMessageDelivered || env.DetailType == events.DetailMessageUndeliverable {
			var d detail
			_ = json.Unmarshal(env.Detail, &d)
			got[d.UserID+"/"+d.MessageID] = true
		}
	}
	missing := 0
	for u, ids := range l.accepted {
		for _, id := range ids {
			if !got[u+"/"+id] {
				missing++
			}
		}
	}
	return missing
}

// allOffline reports whether every user's last transition is UserOffline.
func allOffline(envs []events.Envelope) bool {
	last := map[string]events.DetailType{}
	for _, env := range envs {
		if env.DetailType == events.DetailUserOnline || env.DetailType == events.DetailUserOffline {
			var d detail
			_ = json.Unmarshal(env.Detail, &d)
			last[d.UserID] = env.DetailType
		}
	}
	for _, dt := range last {
		if dt != events.DetailUserOffline {
			return false
		}
	}
	return true
}

// checkTransitions: per user, UserOnline and UserOffline alternate strictly, from online.
func checkTransitions(t *testing.T, envs []events.Envelope) {
	t.Helper()
	seq := map[string][]events.DetailType{}
	ids := map[string]bool{}
	for _, env := range envs {
		if ids[env.ID] {
			t.Errorf("event %s published twice", env.ID)
		}
		ids[env.ID] = true
		if env.DetailType == events.DetailUserOnline || env.DetailType == events.DetailUserOffline {
			var d detail
			_ = json.Unmarshal(env.Detail, &d)
			seq[d.UserID] = append(seq[d.UserID], env.DetailType)
		}
	}
	for u, s := range seq {
		for i, dt := range s {
			want := events.DetailUserOnline
			if i%2 == 1 {
				want = events.DetailUserOffline
			}
			if dt != want {
				t.Errorf("%s: transitions %v do not alternate", u, s)
				break
			}
		}
	}
}
