package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestFloorServerAnswersOnceDurableAfterTheFrames: a POST is answered with the fixed 202
// only once its body is in the log, after a text frame of the body went to each of its
// user's connections (and to no other user's), and the commit is counted.
func TestFloorServerAnswersOnceDurableAfterTheFrames(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "log")
	addr := startServer(t, logPath, 0)
	dial := func(first string) net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := io.WriteString(c, first); err != nil {
			t.Fatal(err)
		}
		return c
	}
	mine := []net.Conn{dial("WS 3\n"), dial("WS 3\n")}
	other := dial("WS 4\n")
	time.Sleep(100 * time.Millisecond) // registered
	body := `[{"UserId":"user-3","Body":"hello"}]`
	pub := dial("POST\n")
	fmt.Fprintf(pub, "POST /push HTTP/1.1\r\nHost: floor\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	got := make([]byte, len(accepted))
	_ = pub.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(pub, got); err != nil || string(got) != accepted {
		t.Fatalf("answer %q (%v), want the 202", got, err)
	}
	data, err := os.ReadFile(logPath)
	if err != nil || !bytes.Contains(data, []byte(body+"\n")) {
		t.Fatalf("answered before the body was in the log: %q (%v)", data, err)
	}
	want := append([]byte{0x81, byte(len(body))}, body...)
	for i, c := range mine {
		frame := make([]byte, len(want))
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, frame); err != nil || !bytes.Equal(frame, want) {
			t.Errorf("connection %d of the user: frame %q (%v), want %q", i, frame, err, want)
		}
	}
	_ = other.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, _ := other.Read(make([]byte, 64)); n > 0 {
		t.Errorf("another user's connection got %d bytes", n)
	}
	if n, err := commits(addr); err != nil || n != 1 {
		t.Errorf("commits %d (%v), want 1", n, err)
	}
}

// TestFloorLoadCountsWhatWasAnswered: the load posts at its rate for its duration and
// reports every answer, the commits the server made for them and the latencies' order.
func TestFloorLoadCountsWhatWasAnswered(t *testing.T) {
	r, err := load(startServer(t, filepath.Join(t.TempDir(), "log"), time.Millisecond), os.Getpid(), 200, 500*time.Millisecond, 5, 4)
	if err != nil {
		t.Fatal(err)
	}
	if r.answered < 90 || r.answered > 110 {
		t.Errorf("%d answered at 200 a second for 0.5 s, want about 100", r.answered)
	}
	if r.commits < 1 || r.commits > r.answered {
		t.Errorf("%d commits for %d answers", r.commits, r.answered)
	}
	if r.p50 <= 0 || r.p99 < r.p50 {
		t.Errorf("p50 %v, p99 %v", r.p50, r.p99)
	}
}

// startServer serves a floor server logging to logPath, each commit held for hold, until
// the test ends, and returns its address.
func startServer(t *testing.T, logPath string, hold time.Duration) string {
	t.Helper()
	s, err := newServer(logPath, hold, true)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); s.close() })
	go func() { _ = s.serveOn(ln) }()
	return ln.Addr().String()
}
