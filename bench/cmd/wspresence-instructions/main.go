// Command wspresence-instructions counts the user-space CPU instructions `wspresence serve`
// spends per delivered message, under valgrind's callgrind: a figure the machine's other
// load does not move (two runs of one build differ by about 1%), for the before and after
// of a change on a busy machine. Kernel time (system calls, fsync) is not in it.
//
// Users connect with one connection each; counting is switched on for the messages alone
// (one message per POST /messages, a few in flight) until every frame has arrived and the
// outcomes are recorded, then divided by the messages. Pings are set an hour apart so that
// only the messages are counted; Go's asynchronous preemption is off (callgrind does not
// follow its signals).
//
//	wspresence-instructions --server ./wspresence [--reference ./wspresence-before] [--users 200] [--messages 1000]
package main

import (
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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/wspresence/wspresence/bench/internal/bench"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "wspresence-instructions:", err)
		os.Exit(1)
	}
}

func run() error {
	server := flag.String("server", "", "path of the wspresence binary (required)")
	reference := flag.String("reference", "", "path of an earlier binary, measured the same way after it")
	users := flag.Int("users", 200, "users, one connection each")
	messages := flag.Int("messages", 1000, "messages, one per request")
	inFlight := flag.Int("in-flight", 8, "requests in flight")
	flag.Parse()
	if *server == "" {
		return errors.New("--server is required")
	}
	if _, err := exec.LookPath("valgrind"); err != nil {
		return errors.New("valgrind is not installed")
	}
	var per []float64
	for _, bin := range []string{*server, *reference} {
		if bin == "" {
			continue
		}
		n, err := count(bin, *users, *messages, *inFlight)
		if err != nil {
			return fmt.Errorf("%s: %w", bin, err)
		}
		fmt.Printf("%s: %.0f instructions per delivered message (%d users, %d messages)\n", bin, n, *users, *messages)
		per = append(per, n)
	}
	if len(per) == 2 {
		fmt.Printf("ratio: %.3f\n", per[0]/per[1])
	}
	return nil
}

// count runs bin under callgrind and returns its instructions per delivered message.
func count(bin string, users, messages, inFlight int) (float64, error) {
	abs, err := filepath.Abs(bin)
	if err != nil {
		return 0, err
	}
	tmp, err := os.MkdirTemp("", "wspresence-instructions-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "callgrind.out")
	wrapper := filepath.Join(tmp, "serve-under-callgrind")
	script := fmt.Sprintf("#!/bin/sh\nGODEBUG=asyncpreemptoff=1,schedtrace=0 exec valgrind --tool=callgrind --instr-atstart=no --log-file=%s --callgrind-out-file=%s %s \"$@\"\n",
		filepath.Join(tmp, "valgrind.log"), out, strconv.Quote(abs))
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		return 0, err
	}
	t, err := bench.StartWspresence(wrapper, filepath.Join(tmp, "data"), "", "--ping-interval", "1h", "--idle-timeout", "3h")
	if err != nil {
		return 0, err
	}
	stopped := false
	defer func() {
		if !stopped {
			t.Stop()
		}
	}()
	ctx := context.Background()
	var received atomic.Int64
	for u := range users {
		dctx, cancel := context.WithTimeout(ctx, time.Minute)
		c, _, err := websocket.Dial(dctx, t.WebSocketURL(fmt.Sprint("u", u)), nil)
		cancel()
		if err != nil {
			return 0, fmt.Errorf("connect: %w", err)
		}
		defer c.CloseNow()
		go func() {
			for {
				if _, _, err := c.Read(ctx); err != nil {
					return
				}
				received.Add(1)
			}
		}()
	}
	pid := strconv.Itoa(t.Pid())
	if err := exec.Command("callgrind_control", "-i", "on", pid).Run(); err != nil {
		return 0, fmt.Errorf("callgrind_control: %w", err)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, inFlight)
	for range inFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= int64(messages); i = next.Add(1) {
				body := fmt.Sprintf(`{"UserId":"u%d","Body":"message %d"}`, i%int64(users), i)
				resp, err := http.DefaultClient.Do(t.PushRequest(ctx, []byte(body)))
				if err != nil {
					errs <- err
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					errs <- fmt.Errorf("POST /messages: %s", resp.Status)
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return 0, err
	default:
	}
	for deadline := time.Now().Add(5 * time.Minute); received.Load() < int64(messages); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%d of %d frames arrived", received.Load(), messages)
		}
	}
	time.Sleep(500 * time.Millisecond) // the outcomes' commit
	_ = exec.Command("callgrind_control", "-i", "off", pid).Run()
	t.Stop()
	stopped = true
	data, err := os.ReadFile(out)
	if err != nil {
		return 0, fmt.Errorf("callgrind's output: %w", err)
	}
	for _, line := range bytes.Split(data, []byte("\n")) {
		if v, ok := strings.CutPrefix(string(line), "totals: "); ok {
			n, err := strconv.ParseFloat(strings.Fields(v)[0], 64)
			if err != nil {
				return 0, err
			}
			return n / float64(messages), nil
		}
	}
	return 0, errors.New("no totals in callgrind's output")
}
