package localrt_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wspresence/wspresence/internal/auth"
	"github.com/wspresence/wspresence/internal/localrt"
	"github.com/wspresence/wspresence/internal/recovery"
)

// serverFrame is any frame a recovering client receives.
type serverFrame struct {
	Type      string `json:"type"`
	Epoch     string `json:"epoch"`
	Offset    int64  `json:"offset"`
	MessageID string `json:"messageId"`
	Body      string `json:"body"`
	Recovered bool   `json:"recovered"`
	Reason    string `json:"reason"`
	Replayed  int    `json:"replayed"`
	Code      string `json:"code"`
}

// recoveringClient follows one user's stream as the client library does: it recovers
// from its last position on every connection and drops a message at or below it.
type recoveringClient struct {
	t    *testing.T
	ts   *testServer
	user string
	addr string // ws://host:port the client dials (a proxy's, or the server's)

	mu       sync.Mutex
	epoch    string
	offset   int64
	bodies   []string
	answers  []serverFrame
	conn     *websocket.Conn
	ended    chan struct{}
	answered chan struct{}
}

func newRecoveringClient(ts *testServer, user string) *recoveringClient {
	return &recoveringClient{t: ts.t, ts: ts, user: user, addr: ts.ws}
}

// connect opens a connection, sends recover with the client's position, and reads until
// the connection ends; it returns once the answer came.
func (rc *recoveringClient) connect() {
	rc.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, rc.addr+"/?Authorization="+rc.ts.token(rc.user),
		&websocket.DialOptions{Subprotocols: []string{recovery.Subprotocol}})
	if err != nil {
		rc.t.Fatalf("dial: %v", err)
	}
	if conn.Subprotocol() != recovery.Subprotocol {
		rc.t.Fatalf("subprotocol %q selected", conn.Subprotocol())
	}
	rc.mu.Lock()
	req := `{"action":"recover"}`
	if rc.epoch != "" {
		req = fmt.Sprintf(`{"action":"recover","epoch":%q,"offset":%d}`, rc.epoch, rc.offset)
	}
	rc.conn, rc.ended, rc.answered = conn, make(chan struct{}), make(chan struct{})
	ended, answered := rc.ended, rc.answered
	rc.mu.Unlock()
	if err := conn.Write(ctx, websocket.MessageText, []byte(req)); err != nil {
		rc.t.Fatalf("send recover: %v", err)
	}
	go func() {
		defer close(ended)
		for {
			_, data, err := conn.Read(context.Background())
			if err != nil {
				return
			}
			var f serverFrame
			if err := json.Unmarshal(data, &f); err != nil {
				rc.t.Errorf("frame %q: %v", data, err)
				return
			}
			rc.take(f, answered)
		}
	}()
	select {
	case <-answered:
	case <-time.After(10 * time.Second):
		rc.t.Fatal("no recovered frame within 10s")
	}
}

func (rc *recoveringClient) take(f serverFrame, answered chan struct{}) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	switch f.Type {
	case "message":
		if f.Epoch == rc.epoch && f.Offset <= rc.offset {
			return // a duplicate, dropped by offset
		}
		if f.Epoch == rc.epoch && f.Offset != rc.offset+1 {
			rc.t.Errorf("message at offset %d after %d: a gap", f.Offset, rc.offset)
		}
		rc.epoch, rc.offset = f.Epoch, f.Offset
		rc.bodies = append(rc.bodies, f.Body)
	case "recovered":
		rc.answers = append(rc.answers, f)
		rc.epoch, rc.offset = f.Epoch, f.Offset
		close(answered)
	default:
		rc.t.Errorf("unexpected frame %+v", f)
	}
}

func (rc *recoveringClient) lastAnswer() serverFrame {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.answers[len(rc.answers)-1]
}

func (rc *recoveringClient) received() []string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]string(nil), rc.bodies...)
}

// sender posts numbered messages to user, one at a time, until stopped; it returns the
// bodies acknowledged (202).
type sender struct {
	ts    *testServer
	user  string
	stop  chan struct{}
	done  chan struct{}
	n     atomic.Int64
	acked []string
}

func startSender(ts *testServer, user string) *sender {
	s := &sender{ts: ts, user: user, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for i := 1; ; i++ {
			select {
			case <-s.stop:
				return
			default:
			}
			body := "m" + strconv.Itoa(i)
			req, _ := http.NewRequest(http.MethodPost, ts.base+"/messages",
				strings.NewReader(fmt.Sprintf(`{"userId":%q,"body":%q}`, s.user, body)))
			req.Header.Set("X-Api-Key", testKey)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusAccepted {
				s.acked = append(s.acked, body)
				s.n.Add(1)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return s
}

func (s *sender) finish() []string {
	close(s.stop)
	<-s.done
	return s.acked
}

// waitAcked waits until n more messages were acknowledged.
func (s *sender) waitAcked(t *testing.T, n int64) {
	t.Helper()
	target := s.n.Load() + n
	waitFor(t, fmt.Sprintf("%d messages acknowledged", target), func() bool { return s.n.Load() >= target })
}

// expectExactlyOnce asserts that got is want, in order.
func expectExactlyOnce(t *testing.T, got, want []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("received %d messages, %d acknowledged", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("message %d is %q, want %q", i, got[i], want[i])
		}
	}
}

// waitReceived waits until the client received n messages.
func (rc *recoveringClient) waitReceived(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(rc.received()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("received %d messages within 10s, want %d", len(rc.received()), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRecoveryAfterServerClose: a recovering client closed by the server mid-stream (its
// inbound rate exceeded) reconnects inside the window while the sender keeps sending:
// every message arrives exactly once, in order, each delivered outcome published once.
func TestRecoveryAfterServerClose(t *testing.T) {
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) { c.InboundRate, c.InboundBurst = 5, 5 })
	rc := newRecoveringClient(ts, "alice")
	rc.connect()
	if a := rc.lastAnswer(); a.Recovered || a.Reason != "fresh" || a.Offset != 0 || a.Epoch == "" {
		t.Fatalf("first answer %+v, want fresh at 0", a)
	}
	s := startSender(ts, "alice")
	s.waitAcked(t, 20)
	// Past the inbound limit the server closes the connection (1008).
	for i := 0; i < 20; i++ {
		if rc.conn.Write(context.Background(), websocket.MessageText, []byte(`{"action":"ping"}`)) != nil {
			break
		}
	}
	<-rc.ended
	s.waitAcked(t, 20)
	rc.connect()
	if a := rc.lastAnswer(); !a.Recovered || a.Reason != "" || a.Replayed == 0 {
		t.Fatalf("answer %+v, want recovered with a replay", a)
	}
	s.waitAcked(t, 20)
	want := s.finish()
	rc.waitReceived(t, len(want))
	expectExactlyOnce(t, rc.received(), want)
	if len(rc.answers) != 2 {
		t.Fatalf("%d answers, want 2", len(rc.answers))
	}
}

// blackhole forwards TCP connections to a server until frozen: then it stops reading
// either side, holding the sockets open, as a network that went silent does.
type blackhole struct {
	ln     net.Listener
	frozen atomic.Bool
}

func newBlackhole(t *testing.T, target string) *blackhole {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				down.Close()
				continue
			}
			t.Cleanup(func() { down.Close(); up.Close() })
			go b.pipe(up, down)
			go b.pipe(down, up)
		}
	}()
	return b
}

// pipe copies from src to dst until frozen (then it stops reading src) or src ends.
func (b *blackhole) pipe(dst, src net.Conn) {
	buf := make([]byte, 4096)
	for {
		n, err := src.Read(buf)
		if err != nil || b.frozen.Load() {
			return
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

// TestRecoveryAfterSilentDrop: the network under a recovering client goes silent (the
// server keeps writing into it until its pings go unanswered); the client gives up on
// the connection and reconnects at once, before the server noticed: the frames written
// into the silence are replayed from the client's position, every message once, in
// order.
func TestRecoveryAfterSilentDrop(t *testing.T) {
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) { c.PingInterval = 300 * time.Millisecond })
	hole := newBlackhole(t, ts.srv.Addr().String())
	rc := newRecoveringClient(ts, "bob")
	rc.addr = "ws://" + hole.ln.Addr().String()
	rc.connect()
	s := startSender(ts, "bob")
	s.waitAcked(t, 20)
	hole.frozen.Store(true)
	s.waitAcked(t, 20)
	rc.conn.CloseNow()
	<-rc.ended
	rc.addr = ts.ws
	rc.connect()
	if a := rc.lastAnswer(); !a.Recovered || a.Replayed == 0 {
		t.Fatalf("answer %+v, want recovered with a replay", a)
	}
	s.waitAcked(t, 20)
	want := s.finish()
	rc.waitReceived(t, len(want))
	expectExactlyOnce(t, rc.received(), want)
	// The server notices the silent connection only later, by its pings.
	waitFor(t, "the silent connection closed", func() bool { return ts.metrics()["wspresence_connections"] == 1 })
}

// TestRecoveryOutsideWindow: a recovering client that comes back after the window is
// told once (recovered:false) at the top of its stream, with nothing replayed, and live
// messages follow the answer: too_old while its stream was kept (the user stayed online
// on another connection), epoch_changed once it was dropped (nothing kept, nobody
// online). The messages nobody received are MessageUndeliverable once the window passed.
func TestRecoveryOutsideWindow(t *testing.T) {
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) { c.RecoveryWindow = time.Second })
	sub := ts.subscribe("")
	defer sub.close()
	for _, user := range []string{"carol", "dave"} {
		if user == "dave" {
			ts.dial(user) // a raw connection keeps dave online
		}
		rc := newRecoveringClient(ts, user)
		rc.connect()
		ts.send(fmt.Sprintf(`{"userId":%q,"body":"before"}`, user))
		rc.waitReceived(t, 1)
		rc.conn.Close(websocket.StatusNormalClosure, "")
		<-rc.ended
		var missed []string
		for i := 0; i < 5; i++ {
			missed = append(missed, ts.send(fmt.Sprintf(`{"userId":%q,"body":"missed %d"}`, user, i))...)
		}
		if user == "carol" {
			waitFor(t, "the missed messages reported undeliverable", func() bool {
				return len(sub.of("MessageUndeliverable", user)) == len(missed)
			})
			for _, u := range sub.of("MessageUndeliverable", user) {
				if u["reason"] != "offline" {
					t.Fatalf("undeliverable %v, want offline", u)
				}
			}
		}
		// The window passes; the prune that follows it forgets the positions.
		time.Sleep(2500 * time.Millisecond)
		before := rc.lastAnswer().Epoch
		rc.connect()
		a := rc.lastAnswer()
		switch user {
		case "carol":
			if a.Recovered || a.Reason != "epoch_changed" || a.Replayed != 0 || a.Offset != 0 || a.Epoch == before {
				t.Fatalf("%s: answer %+v, want epoch_changed at offset 0", user, a)
			}
		case "dave":
			if a.Recovered || a.Reason != "too_old" || a.Replayed != 0 || a.Offset != 6 || a.Epoch != before {
				t.Fatalf("%s: answer %+v, want too_old at offset 6 in the same epoch", user, a)
			}
		}
		ts.send(fmt.Sprintf(`{"userId":%q,"body":"after"}`, user))
		rc.waitReceived(t, 2)
		if got := rc.received(); got[0] != "before" || got[1] != "after" || len(rc.answers) != 2 {
			t.Fatalf("%s: received %q with answers %+v", user, got, rc.answers)
		}
		if rc.offset != a.Offset+1 {
			t.Fatalf("%s: live message at offset %d after the answer at %d", user, rc.offset, a.Offset)
		}
	}
	if d := sub.of("MessageDelivered", "carol"); len(d) != 2 {
		t.Fatalf("%d delivered, want 2", len(d))
	}
}

// dialOptedIn opens a connection asking for the recovery subprotocol with token and
// returns the close status the server ends it with at once (refused clients).
func dialOptedIn(t *testing.T, ts *testServer, token string) (websocket.StatusCode, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, ts.ws+"/?Authorization="+token, &websocket.DialOptions{Subprotocols: []string{recovery.Subprotocol}})
	if err != nil {
		t.Fatalf("an opted-in client must be upgraded, then closed: %v %v", err, resp)
	}
	defer conn.CloseNow()
	_, _, err = conn.Read(ctx)
	var ce websocket.CloseError
	if !errors.As(err, &ce) {
		t.Fatalf("read after a refusal: %v, want a close frame", err)
	}
	return ce.Code, ce.Reason
}

// TestRecoveryCloseCodes: an opted-in client refused at the handshake is upgraded and
// closed with a typed close code, and nothing is recorded for it; a raw client keeps its
// HTTP refusal.
func TestRecoveryCloseCodes(t *testing.T) {
	var full atomic.Bool
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) {
		c.MaxConnectionsPerUser = 1
		localrt.SetStoreFault(c, func() error {
			if full.Load() {
				return errors.New("no space left on device")
			}
			return nil
		})
	})
	expired, err := auth.Mint([]byte(testSecret), "erin", time.Minute, time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	forged, err := auth.Mint([]byte("another-secret-0123456789abcdef-01"), "erin", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		token  string
		code   websocket.StatusCode
		reason string
	}{
		{"expired", expired, recovery.CloseTokenExpired, "token refused: expired"},
		{"forged", forged, recovery.CloseTokenRefused, "token refused: signature"},
	} {
		if code, reason := dialOptedIn(t, ts, c.token); code != c.code || reason != c.reason {
			t.Errorf("%s: closed %d %q, want %d %q", c.name, code, reason, c.code, c.reason)
		}
	}
	first := newRecoveringClient(ts, "erin")
	first.connect()
	if code, reason := dialOptedIn(t, ts, ts.token("erin")); code != recovery.CloseTooManyConnections || reason != "too many connections" {
		t.Errorf("over the cap: closed %d %q", code, reason)
	}
	full.Store(true)
	if code, reason := dialOptedIn(t, ts, ts.token("frank")); code != recovery.CloseUnavailable || reason != "unavailable" {
		t.Errorf("store cannot write: closed %d %q", code, reason)
	}
	full.Store(false)
	// Nothing was recorded for the refused ones: erin has one connection, frank none.
	if s, _ := ts.online("userIds=erin,frank"); s[0].Connections != 1 || s[1].IsOnline {
		t.Fatalf("status after refusals %+v", s)
	}
	// A raw client keeps the HTTP status.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, ts.ws+"/?Authorization="+expired, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("raw client with an expired token: %v %v", err, resp)
	}
}

// TestRecoverInvalidFrames: a malformed recover, and a second one, get an error frame
// and the connection stays open; a raw client's recover frame is only activity.
func TestRecoverInvalidFrames(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, ts.ws+"/?Authorization="+ts.token("gil"), &websocket.DialOptions{Subprotocols: []string{recovery.Subprotocol}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	next := func() serverFrame {
		t.Helper()
		_, data, err := conn.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var f serverFrame
		if err := json.Unmarshal(data, &f); err != nil {
			t.Fatal(err)
		}
		return f
	}
	for _, frame := range []string{`{"action":"recover","epoch":"E"}`, `{"action":"recover","epoch":"E","offset":-3}`} {
		_ = conn.Write(ctx, websocket.MessageText, []byte(frame))
		if f := next(); f.Type != "error" || f.Code != recovery.CodeInvalidFrame {
			t.Fatalf("answer to %s: %+v", frame, f)
		}
	}
	_ = conn.Write(ctx, websocket.MessageText, []byte(`{"action":"recover"}`))
	if f := next(); f.Type != "recovered" || f.Reason != "fresh" {
		t.Fatalf("answer to a valid recover after invalid ones: %+v", f)
	}
	_ = conn.Write(ctx, websocket.MessageText, []byte(`{"action":"recover"}`))
	if f := next(); f.Type != "error" || f.Code != recovery.CodeInvalidFrame {
		t.Fatalf("answer to a second recover: %+v", f)
	}
	ts.send(`{"userId":"gil","body":"still open"}`)
	if f := next(); f.Type != "message" || f.Body != "still open" || f.Offset != 1 {
		t.Fatalf("message after the errors: %+v", f)
	}
	raw := ts.dial("hal")
	_ = raw.conn.Write(ctx, websocket.MessageText, []byte(`{"action":"recover"}`))
	ts.send(`{"userId":"hal","body":"raw"}`)
	raw.expectFrame(t, "raw")
}
