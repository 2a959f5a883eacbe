// Command wspresence-floor measures the machine's own floor under the publishers scenario:
// what a server that uses no protocol library at all costs a message, and how long its
// answer takes, when it answers only once durable. Its server reads each POST as raw
// HTTP/1.1 (the Content-Length header and the body, nothing else parsed), appends the
// body to one file and syncs it in group commits (the durable baseline's bench.GroupLog,
// each commit held open for --holds, one run per hold), then writes a pre-encoded unmasked WebSocket text frame to every
// connection of the message's user and a fixed 202. With --sync=false the same server
// writes nothing: the sockets' floor alone. What is left is the kernel's work (the
// loopback's reads and writes, the file's write and fsync) and Go's scheduler: no server
// doing the same traffic durably on this machine can cost less.
//
// The server runs pinned to CPU 0 with two Go Ps, as `wspresence serve` does there, and
// the load on the others: --conns connections (two for each user, opened as raw sockets
// that read whatever comes), then --publishers keep-alive connections posting one
// message a request at --rate in all for --duration. The server's CPU (user + system,
// /proc/<pid>/stat) over the posting, divided by the requests answered, and the POST
// latency from each request's due time are printed as a Markdown table.
//
//	wspresence-floor [--rate 4000] [--duration 10s] [--holds 0s,1ms,5ms] [--sync=true]
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wspresence/wspresence/bench/internal/bench"
)

func main() {
	var err error
	if len(os.Args) > 1 && os.Args[1] == "server" {
		err = serve(os.Args[2:])
	} else {
		err = run()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "wspresence-floor:", err)
		os.Exit(1)
	}
}

func run() error {
	rate := flag.Float64("rate", 4000, "messages a second, one a request, from all publishers")
	dur := flag.Duration("duration", 10*time.Second, "how long each hold's run posts")
	holds := flag.String("holds", "0s,1ms,5ms", "each group commit's hold, one run each (comma-separated)")
	doSync := flag.Bool("sync", true, "append and sync each body before answering (false: the sockets alone)")
	users := flag.Int("users", 2000, "users, two connections each")
	publishers := flag.Int("publishers", 128, "concurrent keep-alive publishers")
	dir := flag.String("dir", "", "directory of the server's log (empty: a temporary one)")
	flag.Parse()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	// The load keeps off CPU 0, the server's, for the whole run (runtime.NumCPU counts the
	// CPUs this process could use at its start).
	if runtime.NumCPU() >= 2 {
		defer bench.ConfineSelf(fmt.Sprintf("1-%d", runtime.NumCPU()-1))()
	}
	if *dir == "" {
		d, err := os.MkdirTemp("", "wspresence-floor-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		*dir = d
	}
	fmt.Printf("| hold | sync | offered | answered | server CPU a message | commits a message | POST p50 | POST p99 |\n|---|---|---|---|---|---|---|---|\n")
	for _, h := range strings.Split(*holds, ",") {
		hold, err := time.ParseDuration(strings.TrimSpace(h))
		if err != nil {
			return fmt.Errorf("--holds: %w", err)
		}
		r, err := measure(self, *dir, hold, *doSync, *rate, *dur, *users, *publishers)
		if err != nil {
			return err
		}
		fmt.Printf("| %v | %v | %.0f msg/s | %d | %.1f µs | %.3f | %.2f ms | %.2f ms |\n", hold, *doSync, *rate, r.answered,
			r.cpu*1e6/float64(r.answered), float64(r.commits)/float64(r.answered), ms(r.p50), ms(r.p99))
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// result is one run's figures.
type result struct {
	answered, commits int64
	cpu               float64 // server CPU seconds over the posting
	p50, p99          time.Duration
}

var listenRe = regexp.MustCompile(`listening on (\S+)`)

// measure starts a server with hold and runs the load against it.
func measure(self, dir string, hold time.Duration, doSync bool, rate float64, dur time.Duration, users, publishers int) (result, error) {
	log := filepath.Join(dir, "log")
	args := []string{"server", "--log", log, "--hold", hold.String(), "--sync=" + strconv.FormatBool(doSync)}
	cmd := exec.Command(self, args...)
	if ts, err := exec.LookPath("taskset"); err == nil && runtime.NumCPU() >= 2 {
		cmd = exec.Command(ts, append([]string{"-c", "0", self}, args...)...)
	}
	cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return result{}, err
	}
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	sc := bufio.NewScanner(out)
	addr := ""
	for addr == "" && sc.Scan() {
		if m := listenRe.FindStringSubmatch(sc.Text()); m != nil {
			addr = m[1]
		}
	}
	if addr == "" {
		return result{}, errors.New("the server did not start")
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	return load(addr, cmd.Process.Pid, rate, dur, users, publishers)
}

// load opens the users' connections, then posts for dur at rate and returns the figures.
func load(addr string, pid int, rate float64, dur time.Duration, users, publishers int) (result, error) {
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for u := range users {
		for range 2 {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				return result{}, err
			}
			conns = append(conns, c)
			if _, err := fmt.Fprintf(c, "WS %d\n", u); err != nil {
				return result{}, err
			}
			go func() { _, _ = io.Copy(io.Discard, c) }()
		}
	}
	time.Sleep(time.Second) // every connection registered
	c0, err := bench.ProcessCPUSeconds(pid)
	if err != nil {
		return result{}, err
	}
	commits0, err := commits(addr)
	if err != nil {
		return result{}, err
	}
	per := time.Duration(float64(time.Second) * float64(publishers) / rate)
	deadline := time.Now().Add(dur)
	var mu sync.Mutex
	var lats []time.Duration
	var answered atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, publishers)
	for i := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine, err := publish(addr, i, users, per, time.Duration(i)*per/time.Duration(publishers), deadline, &answered)
			if err != nil {
				errs <- err
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return result{}, err
	}
	c1, err := bench.ProcessCPUSeconds(pid)
	if err != nil {
		return result{}, err
	}
	commits1, err := commits(addr)
	if err != nil {
		return result{}, err
	}
	if len(lats) == 0 {
		return result{}, errors.New("no request answered")
	}
	slices.Sort(lats)
	q := func(p float64) time.Duration { return lats[int(p*float64(len(lats)-1))] }
	return result{answered: answered.Load(), commits: commits1 - commits0, cpu: c1 - c0, p50: q(0.5), p99: q(0.99)}, nil
}

// publish posts one message every per (starting after offset) until deadline, on one
// keep-alive connection, and returns each POST's latency from its due time.
func publish(addr string, i, users int, per, offset time.Duration, deadline time.Time, answered *atomic.Int64) ([]time.Duration, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if _, err := io.WriteString(c, "POST\n"); err != nil {
		return nil, err
	}
	br := bufio.NewReader(c)
	var lats []time.Duration
	due := time.Now().Add(offset)
	for k := 0; due.Before(deadline); k++ {
		time.Sleep(time.Until(due))
		body := fmt.Sprintf(`[{"UserId":"user-%d","Body":"p%d:%d"}]`, (i*7919+k*31)%users, i, k)
		req := "POST /push HTTP/1.1\r\nHost: floor\r\nContent-Type: application/json\r\nContent-Length: " +
			strconv.Itoa(len(body)) + "\r\n\r\n" + body
		if _, err := io.WriteString(c, req); err != nil {
			return lats, err
		}
		if _, err := io.ReadFull(br, make([]byte, len(accepted))); err != nil {
			return lats, err
		}
		lats = append(lats, time.Since(due))
		answered.Add(1)
		due = due.Add(per)
	}
	return lats, nil
}

// commits asks the server how many group commits it has made.
func commits(addr string) (int64, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if _, err := io.WriteString(c, "COMMITS\n"); err != nil {
		return 0, err
	}
	var n int64
	_, err = fmt.Fscan(c, &n)
	return n, err
}

// accepted is the server's whole answer to a POST.
const accepted = "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

// server is the floor's server: connections by user, and the durable baseline's
// group-committed log (nil when it does not sync).
type server struct {
	mu     sync.Mutex
	byUser map[int][]net.Conn
	log    *bench.GroupLog
}

func serve(args []string) error {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	logPath := fs.String("log", "", "the log file")
	hold := fs.Duration("hold", 0, "each group commit's hold")
	doSync := fs.Bool("sync", true, "append and sync before answering")
	_ = fs.Parse(args)
	s, err := newServer(*logPath, *hold, *doSync)
	if err != nil {
		return err
	}
	defer s.close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Printf("floor listening on %s\n", ln.Addr())
	return s.serveOn(ln)
}

// newServer opens the server's log (truncated) and starts its committer, if doSync.
func newServer(logPath string, hold time.Duration, doSync bool) (*server, error) {
	s := &server{byUser: map[int][]net.Conn{}}
	if doSync {
		l, err := bench.OpenGroupLog(logPath, hold)
		if err != nil {
			return nil, err
		}
		s.log = l
	}
	return s, nil
}

// close closes the log (appends after it fail, and their requests' connections end).
func (s *server) close() {
	if s.log != nil {
		s.log.Close()
	}
}

// serveOn serves the connections ln accepts until it fails.
func (s *server) serveOn(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go s.conn(c)
	}
}

// conn serves one connection: a user's (its first line "WS <user>"), a publisher's
// ("POST"), or a question for the commit count ("COMMITS").
func (s *server) conn(c net.Conn) {
	defer c.Close()
	br := bufio.NewReaderSize(c, 4096)
	first, err := br.ReadString('\n')
	if err != nil {
		return
	}
	switch {
	case strings.HasPrefix(first, "WS "):
		u, err := strconv.Atoi(strings.TrimSpace(first[3:]))
		if err != nil {
			return
		}
		s.mu.Lock()
		s.byUser[u] = append(s.byUser[u], c)
		s.mu.Unlock()
		_, _ = io.Copy(io.Discard, br)
	case first == "COMMITS\n":
		var n int64
		if s.log != nil {
			n = s.log.Commits()
		}
		fmt.Fprintf(c, "%d\n", n)
	case first == "POST\n":
		s.posts(c, br)
	}
}

// posts answers a publisher's requests, each once its body is durable, after its frames.
func (s *server) posts(c net.Conn, br *bufio.Reader) {
	userRe := []byte(`"UserId":"user-`)
	frame := make([]byte, 0, 128)
	for {
		n := -1
		for {
			line, err := br.ReadSlice('\n')
			if err != nil {
				return
			}
			if len(line) <= 2 {
				break
			}
			if v, ok := bytes.CutPrefix(line, []byte("Content-Length: ")); ok {
				if n, err = strconv.Atoi(string(bytes.TrimSpace(v))); err != nil {
					return
				}
			}
		}
		if n < 0 || n > 125 { // the frame below carries the body in one length byte
			return
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(br, body); err != nil {
			return
		}
		if s.log != nil {
			if err := s.log.Append(body); err != nil {
				return
			}
		}
		i := bytes.Index(body, userRe)
		if i < 0 {
			return
		}
		rest := body[i+len(userRe):]
		j := bytes.IndexByte(rest, '"')
		u, err := strconv.Atoi(string(rest[:max(j, 0)]))
		if err != nil {
			return
		}
		frame = append(append(frame[:0], 0x81, byte(len(body))), body...) // a text frame of the body, under 126 bytes
		s.mu.Lock()
		targets := s.byUser[u]
		s.mu.Unlock()
		for _, t := range targets {
			_, _ = t.Write(frame)
		}
		if _, err := io.WriteString(c, accepted); err != nil {
			return
		}
	}
}
