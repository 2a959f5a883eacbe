package localrt_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/auth"
	"github.com/wspresence/wspresence/internal/localrt"
	"github.com/wspresence/wspresence/internal/onlineapi"
	"github.com/wspresence/wspresence/internal/schematest"
	"github.com/wspresence/wspresence/schemas"
)

const (
	testSecret = "test-secret-0123456789abcdef-0123"
	testKey    = "test-api-key-0123456789"
)

type testServer struct {
	t    *testing.T
	srv  *localrt.Server
	cfg  localrt.Config
	base string
	ws   string
	logs *lockedWriter
	// tokens lists every token minted for the test.
	tokens []string
}

// startServer starts a server on a random loopback port in dir; tweak adjusts the config.
func startServer(t *testing.T, dir string, tweak func(*localrt.Config)) *testServer {
	t.Helper()
	cfg := localrt.DefaultConfig()
	cfg.Addr = "127.0.0.1:0"
	cfg.DataDir = dir
	cfg.OfflineGrace = 500 * time.Millisecond
	cfg.JWTSecret = testSecret
	cfg.APIKey = testKey
	if tweak != nil {
		tweak(&cfg)
	}
	logs := &lockedWriter{w: &bytes.Buffer{}}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := localrt.New(context.Background(), cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ts := &testServer{t: t, srv: srv, cfg: cfg, base: "http://" + srv.Addr().String(), ws: "ws://" + srv.Addr().String(), logs: logs}
	t.Cleanup(func() { ts.stop() })
	return ts
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// String returns what was written so far.
func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.(*bytes.Buffer).String()
}

func (ts *testServer) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); err != nil {
		ts.t.Errorf("shutdown: %v", err)
	}
}

func (ts *testServer) token(user string) string {
	ts.t.Helper()
	tok, err := auth.Mint([]byte(testSecret), user, time.Hour, time.Now())
	if err != nil {
		ts.t.Fatal(err)
	}
	ts.tokens = append(ts.tokens, tok)
	return tok
}

// client is a real WebSocket client that collects the frames it receives.
type client struct {
	conn   *websocket.Conn
	frames chan string
	closed chan error
}

func (ts *testServer) dial(user string) *client {
	ts.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, ts.ws+"/?Authorization="+ts.token(user), nil)
	if err != nil {
		ts.t.Fatalf("dial as %s: %v (%v)", user, err, resp)
	}
	c := &client{conn: conn, frames: make(chan string, 100), closed: make(chan error, 1)}
	go func() {
		for {
			_, data, err := conn.Read(context.Background())
			if err != nil {
				c.closed <- err
				close(c.frames)
				return
			}
			c.frames <- string(data)
		}
	}()
	ts.t.Cleanup(func() { conn.CloseNow() })
	return c
}

func (c *client) expectFrame(t *testing.T, want string) {
	t.Helper()
	select {
	case got, ok := <-c.frames:
		if !ok {
			t.Fatalf("connection closed while waiting for %q", want)
		}
		if got != want {
			t.Fatalf("frame %q, want %q", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no frame %q within 5s", want)
	}
}

func (c *client) close(t *testing.T) {
	t.Helper()
	if err := c.conn.Close(websocket.StatusNormalClosure, "bye"); err != nil {
		t.Fatalf("close: %v", err)
	}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (ts *testServer) do(method, path, key string, body []byte) response {
	ts.t.Helper()
	req, err := http.NewRequest(method, ts.base+path, bytes.NewReader(body))
	if err != nil {
		ts.t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("X-Api-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		ts.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: data}
}

// online calls GET /user/online with the API key and checks the reply against its schema.
func (ts *testServer) online(query string) ([]onlineapi.Status, response) {
	ts.t.Helper()
	path := "/user/online"
	if query != "" {
		path += "?" + query
	}
	r := ts.do(http.MethodGet, path, testKey, nil)
	if r.status != http.StatusOK {
		ts.t.Fatalf("GET %s: %d %s", path, r.status, r.body)
	}
	schematest.DecodeOriginalList(ts.t, r.body)
	var out []onlineapi.Status
	if err := json.Unmarshal(r.body, &out); err != nil {
		ts.t.Fatal(err)
	}
	return out, r
}

// userStatus calls GET /user/{userId}/online with the API key and reads it as the original
// service's typed client does.
func (ts *testServer) userStatus(user string) string {
	ts.t.Helper()
	r := ts.do(http.MethodGet, "/user/"+url.PathEscape(user)+"/online", testKey, nil)
	if r.status != http.StatusOK {
		ts.t.Fatalf("GET /user/%s/online: %d %s", user, r.status, r.body)
	}
	return schematest.DecodeOriginalStatus(ts.t, r.body).Status
}

func (ts *testServer) send(msg string) []string {
	ts.t.Helper()
	r := ts.do(http.MethodPost, "/messages", testKey, []byte(msg))
	if r.status != http.StatusAccepted {
		ts.t.Fatalf("POST /messages %s: %d %s", msg, r.status, r.body)
	}
	schematest.Check(ts.t, schemas.EnqueueReply, r.body)
	var reply localrt.EnqueueReply
	if err := json.Unmarshal(r.body, &reply); err != nil {
		ts.t.Fatal(err)
	}
	return reply.MessageIDs
}

// expectError asserts a JSON error reply with the status and code, valid against its schema.
func expectError(t *testing.T, r response, status int, code string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d (%s)", r.status, status, r.body)
	}
	schematest.Check(t, schemas.Error, r.body)
	var e struct{ Code, Message string }
	if err := json.Unmarshal(r.body, &e); err != nil || e.Code != code || e.Message == "" {
		t.Fatalf("error body %s, want code %q", r.body, code)
	}
}

// subscriber reads GET /events and collects the envelopes, each checked against its schema.
type subscriber struct {
	t      *testing.T
	mu     sync.Mutex
	got    []events.Envelope
	cancel context.CancelFunc
	done   chan struct{}
}

func (ts *testServer) subscribe(after string) *subscriber {
	ts.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	path := "/events"
	if after != "" {
		path += "?after=" + after
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.base+path, nil)
	req.Header.Set("Authorization", "Bearer "+testKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		ts.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		cancel()
		ts.t.Fatalf("GET /events: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	s := &subscriber{t: ts.t, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			data, ok := strings.CutPrefix(line, "data: ")
			if !ok {
				continue
			}
			schematest.CheckEnvelope(ts.t, []byte(data))
			var env events.Envelope
			if err := json.Unmarshal([]byte(data), &env); err != nil {
				ts.t.Errorf("event data %q: %v", data, err)
				continue
			}
			s.mu.Lock()
			s.got = append(s.got, env)
			s.mu.Unlock()
		}
	}()
	ts.t.Cleanup(s.close)
	return s
}

func (s *subscriber) close() {
	s.cancel()
	<-s.done
}

// of returns the received events of one detail-type about one user, decoded.
func (s *subscriber) of(dt events.DetailType, user string) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, env := range s.got {
		if env.DetailType != dt {
			continue
		}
		var d map[string]any
		_ = json.Unmarshal(env.Detail, &d)
		if d["userId"] == user {
			out = append(out, d)
		}
	}
	return out
}

// waitFor polls cond until it holds or 5 seconds pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitWithin(t, 5*time.Second, what, cond)
}

// waitWithin waits up to d for cond.
func waitWithin(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func statusOf(list []onlineapi.Status, user string) (onlineapi.Status, bool) {
	for _, s := range list {
		if s.UserID == user {
			return s, true
		}
	}
	return onlineapi.Status{}, false
}

func closeStatus(err error) int { return int(websocket.CloseStatus(err)) }

// metrics reads GET /metrics into a map from series (name and labels) to value.
func (ts *testServer) metrics() map[string]float64 {
	ts.t.Helper()
	r := ts.do(http.MethodGet, "/metrics", "", nil)
	if r.status != http.StatusOK {
		ts.t.Fatalf("GET /metrics: %d", r.status)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(r.body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}
