package localrt_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wspresence/wspresence/internal/localrt"
)

// rawPost opens a connection and sends the head of a POST /messages (no body): its
// Content-Length if length >= 0, else chunked; extra are more header lines.
func rawPost(t *testing.T, base string, length int64, extra ...string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	framing := "Transfer-Encoding: chunked"
	if length >= 0 {
		framing = fmt.Sprintf("Content-Length: %d", length)
	}
	head := "POST /messages HTTP/1.1\r\nHost: x\r\nX-Api-Key: " + testKey + "\r\nContent-Type: application/json\r\n" + framing + "\r\n"
	for _, h := range extra {
		head += h + "\r\n"
	}
	head += "\r\n"
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatal(err)
	}
	return conn, bufio.NewReader(conn)
}

// readAnswer reads the answer to the request sent on conn, and reports whether the server
// then closed the connection.
func readAnswer(t *testing.T, conn net.Conn, br *bufio.Reader) (status int, closed bool) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(time.Minute))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	_, err = br.ReadByte()
	return resp.StatusCode, err != nil
}

// expectChunkRefused sends chunk as the first chunk of a body without a length and
// expects 503: the budget is counted as the body streams in.
func expectChunkRefused(t *testing.T, ts *testServer, chunk []byte) {
	t.Helper()
	conn, br := rawPost(t, ts.base, -1)
	if _, err := fmt.Fprintf(conn, "%x\r\n%s\r\n", len(chunk), chunk); err != nil {
		t.Fatal(err)
	}
	if status, _ := readAnswer(t, conn, br); status != http.StatusServiceUnavailable {
		t.Fatalf("a body without a length over what is left of the budget: %d, want 503", status)
	}
}

// expectHealthy expects /healthz to answer 200.
func expectHealthy(t *testing.T, ts *testServer, when string) {
	t.Helper()
	if r := ts.do(http.MethodGet, "/healthz", "", nil); r.status != http.StatusOK {
		t.Fatalf("/healthz %s: %d %s", when, r.status, r.body)
	}
}

// TestRefusedBeforeItsBody: a request whose body cannot be taken is answered before its
// client sends a byte of it, and its connection is closed; /healthz and connects answer
// while the budget is spent.
func TestRefusedBeforeItsBody(t *testing.T) {
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) { c.BodyBudget = localrt.MaxRequestBytes })

	// Larger than any request: 400 request_too_large at once, whatever the budget.
	conn, br := rawPost(t, ts.base, localrt.MaxRequestBytes+1)
	if status, closed := readAnswer(t, conn, br); status != http.StatusBadRequest || !closed {
		t.Fatalf("body over the largest request: %d, connection closed %v; want 400 and closed", status, closed)
	}

	// A slow body takes the whole budget.
	slow, _ := rawPost(t, ts.base, localrt.MaxRequestBytes)
	if _, err := io.WriteString(slow, `[{"UserId":"u","Body":"`); err != nil {
		t.Fatal(err)
	}
	// Bounded generously: on a loaded machine under -race the slow request's headers can
	// take seconds to reach its handler.
	waitWithin(t, 30*time.Second, "the budget spent", func() bool {
		return ts.do(http.MethodPost, "/messages", testKey, []byte(`{"UserId":"u","Body":"x"}`)).status == http.StatusServiceUnavailable
	})
	// Over what is left of it: 503 before a byte of the body, connection closed.
	conn, br = rawPost(t, ts.base, 1<<20)
	if status, closed := readAnswer(t, conn, br); status != http.StatusServiceUnavailable || !closed {
		t.Fatalf("body over what is left of the budget: %d, connection closed %v; want 503 and closed", status, closed)
	}
	// A body without a length is counted as it streams: refused at its first chunk.
	expectChunkRefused(t, ts, []byte(`[{"UserId":"u","Body":"chunked`))
	// Meanwhile /healthz and a connect answer.
	expectHealthy(t, ts, "while the budget is spent")
	c := ts.dial("budget-user")
	slow.Close() // the slow client gives up: its share comes back
	waitWithin(t, 30*time.Second, "the budget back", func() bool {
		return ts.do(http.MethodPost, "/messages", testKey, []byte(`{"UserId":"budget-user","Body":"taken again"}`)).status == http.StatusAccepted
	})
	c.expectFrame(t, "taken again")
}

// bigBody is a valid POST /messages body to user of n messages of 100,000 characters.
func bigBody(user string, n int) []byte {
	msg := `{"UserId":"` + user + `","Body":"` + strings.Repeat("x", 100_000) + `"}`
	return []byte("[" + strings.Repeat(msg+",", n-1) + msg + "]")
}

// TestStoreQueueBounded: accepted bodies reach the store's writer within a bound of their
// own. While the writer is stalled with twice that bound of accepted bodies, at most the
// bound is handed to it (the others wait within the body budget, so a connect's record
// queues behind no more than the bound) and /healthz answers; once the writer goes on,
// every accepted body is answered 202.
func TestStoreQueueBounded(t *testing.T) {
	var stalled atomic.Bool
	release := make(chan struct{})
	var once sync.Once
	resume := func() { once.Do(func() { close(release) }) }
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) {
		c.BodyBudget = localrt.MaxRequestBytes // room for every body of the test
		localrt.SetStoreFault(c, func() error {
			if stalled.Load() {
				<-release
			}
			return nil
		})
	})
	t.Cleanup(resume) // before the server stops
	const queued = "wspresence_store_queued_message_bytes"
	body := bigBody("queued-user", 2) // about 200 KB
	n := 2 * localrt.StoreQueueBytes / len(body)
	stalled.Store(true)
	answers := make(chan int, n)
	for range n {
		go func() {
			r := ts.do(http.MethodPost, "/messages", testKey, body)
			answers <- r.status
		}()
	}
	waitFor(t, "the store's queue at its bound", func() bool {
		return ts.metrics()[queued] > float64(localrt.StoreQueueBytes-len(body))
	})
	if r := ts.do(http.MethodGet, "/healthz", "", nil); r.status != http.StatusOK {
		t.Fatalf("/healthz while accepted bodies wait for the store: %d %s", r.status, r.body)
	}
	for range 10 {
		if got := ts.metrics()[queued]; got > localrt.StoreQueueBytes {
			t.Fatalf("%s = %.0f while the writer is stalled, bound %d", queued, got, localrt.StoreQueueBytes)
		}
	}
	stalled.Store(false)
	resume()
	for range n {
		if status := <-answers; status != http.StatusAccepted {
			t.Fatalf("an accepted body answered %d once the writer went on, want 202", status)
		}
	}
	if got := ts.metrics()[queued]; got != 0 {
		t.Fatalf("%s = %.0f with every request answered, want 0", queued, got)
	}
}

// TestFloodLeavesHealthAndConnects: while bodies that took the whole budget are held open
// mid-body by their clients, and more requests are refused, by their Content-Length or as
// they stream without one, /healthz answers, a WebSocket connect is accepted and a small
// message still fits and is delivered; the held bodies, once sent, are all accepted.
func TestFloodLeavesHealthAndConnects(t *testing.T) {
	body := bigBody("flood-user", 10) // about 1 MB
	const held = 6
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) {
		c.BodyBudget = max(localrt.MaxRequestBytes, int64(held*len(body))) + 64<<10
	})
	type slow struct {
		conn net.Conn
		br   *bufio.Reader
	}
	var slows []slow
	for range held {
		// "100 Continue" comes once the server took the body's share of the budget.
		conn, br := rawPost(t, ts.base, int64(len(body)), "Expect: 100-continue")
		_ = conn.SetReadDeadline(time.Now().Add(time.Minute))
		if line, err := br.ReadString('\n'); err != nil || !strings.Contains(line, " 100 ") {
			t.Fatalf("a held body's head answered %q (%v), want 100 Continue", line, err)
		}
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write(body[:len(body)/2]); err != nil {
			t.Fatal(err)
		}
		slows = append(slows, slow{conn, br})
	}

	for i := range 20 {
		conn, br := rawPost(t, ts.base, int64(len(body)))
		if status, closed := readAnswer(t, conn, br); status != http.StatusServiceUnavailable || !closed {
			t.Fatalf("refused request %d: %d, connection closed %v; want 503 and closed before its body", i, status, closed)
		}
	}
	expectChunkRefused(t, ts, body[:128<<10])
	expectHealthy(t, ts, "during the flood")
	c := ts.dial("flood-watcher")
	ts.send(`{"userId":"flood-watcher","body":"small enough"}`)
	c.expectFrame(t, "small enough")

	for _, s := range slows {
		if _, err := s.conn.Write(body[len(body)/2:]); err != nil {
			t.Fatal(err)
		}
	}
	for i, s := range slows {
		_ = s.conn.SetReadDeadline(time.Now().Add(time.Minute))
		resp, err := http.ReadResponse(s.br, nil)
		if err != nil {
			t.Fatalf("held body %d, once sent: no answer: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("held body %d, once sent: %d, want 202", i, resp.StatusCode)
		}
	}
}
