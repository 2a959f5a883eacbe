package localrt_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wspresence/wspresence/events"
)

// activityOf reports whether the log holds an activity of user.
func (ts *testServer) activityOf(user string) bool {
	log, err := ts.srv.Store().Log(context.Background())
	if err != nil {
		ts.t.Fatal(err)
	}
	for _, e := range log {
		if e.UserID == user && e.Type == events.TypeActivityRecorded {
			return true
		}
	}
	return false
}

// TestBytesSentWithTheHandshakeAreRead: a client may send its first frame right behind the
// upgrade request, in the same packet; the server's own small buffers, taken at the
// hijack, keep those bytes in front of the socket.
func TestBytesSentWithTheHandshakeAreRead(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	conn, err := net.Dial("tcp", strings.TrimPrefix(ts.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	payload := []byte(`{"action":"ping"}`)
	mask := []byte{1, 2, 3, 4}
	frame := append([]byte{0x81, 0x80 | byte(len(payload))}, mask...)
	for i, b := range payload {
		frame = append(frame, b^mask[i%4])
	}
	req := "GET /?Authorization=" + ts.token("early") + " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := conn.Write(append([]byte(req), frame...)); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	status, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || !strings.HasPrefix(status, "HTTP/1.1 101") {
		t.Fatalf("handshake answered %q, %v", status, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(ts.logs.String())
		}
	})
	waitFor(t, "the frame sent with the handshake to be read (its activity logged)", func() bool { return ts.activityOf("early") })
}

// TestFramesLargerThanTheBuffersPassBothWays: a client frame and a message far larger than
// the connection's buffers are read and written whole.
func TestFramesLargerThanTheBuffersPassBothWays(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(ts.logs.String())
		}
	})
	c := ts.dial("large")
	c.conn.SetReadLimit(1 << 20)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, []byte(`{"action":"ping","pad":"`+strings.Repeat("x", 100_000)+`"}`)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the large client frame to be read (its activity logged)", func() bool { return ts.activityOf("large") })
	body := strings.Repeat("0123456789", 10_000)
	msg, _ := json.Marshal(map[string]string{"UserId": "large", "Body": body})
	ts.send(string(msg))
	c.expectFrame(t, body)
}
