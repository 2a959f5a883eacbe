package localrt_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wspresence/wspresence/internal/localrt"
)

// rawPost opens a connection and sends the head of a POST /messages (no body): its
// Content-Length if length >= 0, else chunked.
func rawPost(t *testing.T, base string, length int64) (net.Conn, *bufio.Reader) {
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
	head := "POST /messages HTTP/1.1\r\nHost: x\r\nX-Api-Key: " + testKey + "\r\nContent-Type: application/json\r\n" + framing + "\r\n\r\n"
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
	waitFor(t, "the budget spent", func() bool {
		return ts.do(http.MethodPost, "/messages", testKey, []byte(`{"UserId":"u","Body":"x"}`)).status == http.StatusServiceUnavailable
	})
	// Over what is left of it: 503 before a byte of the body, connection closed.
	conn, br = rawPost(t, ts.base, 1<<20)
	if status, closed := readAnswer(t, conn, br); status != http.StatusServiceUnavailable || !closed {
		t.Fatalf("body over what is left of the budget: %d, connection closed %v; want 503 and closed", status, closed)
	}
	// A body without a length is counted as it streams: refused at its first chunk.
	conn, br = rawPost(t, ts.base, -1)
	if _, err := io.WriteString(conn, "20\r\n[{\"UserId\":\"u\",\"Body\":\"chunked\r\n"); err != nil {
		t.Fatal(err)
	}
	if status, _ := readAnswer(t, conn, br); status != http.StatusServiceUnavailable {
		t.Fatalf("chunked body over the budget: %d, want 503", status)
	}
	// Meanwhile /healthz and a connect answer.
	if r := ts.do(http.MethodGet, "/healthz", "", nil); r.status != http.StatusOK {
		t.Fatalf("/healthz while the budget is spent: %d %s", r.status, r.body)
	}
	c := ts.dial("budget-user")
	slow.Close() // the slow client gives up: its share comes back
	waitFor(t, "the budget back", func() bool {
		return ts.do(http.MethodPost, "/messages", testKey, []byte(`{"UserId":"budget-user","Body":"taken again"}`)).status == http.StatusAccepted
	})
	c.expectFrame(t, "taken again")
}
