package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestDurableBaselineAnswersOnceTheBodyIsInItsLog: each 202 of a durable baseline comes
// only once its body is in the log file, requests that arrive together share a group
// commit (held open 50 ms here: fewer commits than requests), and /commits counts them.
func TestDurableBaselineAnswersOnceTheBodyIsInItsLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- ServeBaseline(ctx, ln, BaselineOptions{Log: path, Hold: 50 * time.Millisecond}) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	base := "http://" + ln.Addr().String()
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := fmt.Sprintf(`[{"UserId":"u%d","Body":"message %d"}]`, i, i)
			resp, err := http.Post(base+"/push", "application/json", strings.NewReader(body))
			if err != nil {
				errs <- err
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				errs <- fmt.Errorf("push %d: status %d", i, resp.StatusCode)
				return
			}
			data, err := os.ReadFile(path)
			if err != nil {
				errs <- err
				return
			}
			if !bytes.Contains(data, []byte(body+"\n")) {
				errs <- fmt.Errorf("push %d answered 202 before its body was in the log", i)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	resp, err := http.Get(base + "/commits")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	commits, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatalf("/commits answered %q", raw)
	}
	if commits < 1 || commits >= n {
		t.Errorf("%d commits for %d requests sent together with a 50 ms hold, want at least one and fewer than %d", commits, n, n)
	}
	if resp, err := http.Post(base+"/push", "application/json", strings.NewReader("not json")); err != nil {
		t.Error(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a body that is not a message array: status %d, want 400", resp.StatusCode)
	}
}

// TestGroupLogRefusesAppendsOnceClosed: after close, an append fails with ErrLogClosed
// instead of waiting for a committer that is gone.
func TestGroupLogRefusesAppendsOnceClosed(t *testing.T) {
	l, err := OpenGroupLog(filepath.Join(t.TempDir(), "log"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Append([]byte("first")); err != nil {
		t.Fatalf("append: %v", err)
	}
	if got := l.Commits(); got != 1 {
		t.Errorf("%d commits after one append, want 1", got)
	}
	l.Close()
	done := make(chan error, 1)
	go func() { done <- l.Append([]byte("late")) }()
	select {
	case err := <-done:
		if !errors.Is(err, ErrLogClosed) {
			t.Errorf("append after close: %v, want ErrLogClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("append after close still waiting after 5 s")
	}
}
