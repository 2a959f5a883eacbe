package localrt_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/httperr"
	"github.com/wspresence/wspresence/internal/localrt"
	"github.com/wspresence/wspresence/internal/onlineapi"
)

func signed(t *testing.T, m jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(m, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func logLen(t *testing.T, ts *testServer) int {
	t.Helper()
	log, err := ts.srv.Store().Log(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return len(log)
}

// TestBadTokensAreRefusedBeforeUpgrade: every bad token gets a 401 JSON answer, no
// WebSocket, and nothing in the log.
func TestBadTokensAreRefusedBeforeUpgrade(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	exp := time.Now().Add(time.Hour).Unix()
	good := jwt.MapClaims{"userId": "u", "exp": exp}
	tokens := map[string]string{
		"missing":      "",
		"malformed":    "not-a-jwt",
		"expired":      signed(t, jwt.SigningMethodHS256, []byte(testSecret), jwt.MapClaims{"userId": "u", "exp": time.Now().Add(-time.Hour).Unix()}),
		"none":         signed(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, good),
		"HS512":        signed(t, jwt.SigningMethodHS512, []byte(testSecret), good),
		"RS256":        signed(t, jwt.SigningMethodRS256, rsaKey, good),
		"wrong secret": signed(t, jwt.SigningMethodHS256, []byte("some-other-secret-0123456789abcd"), good),
		"no userId":    signed(t, jwt.SigningMethodHS256, []byte(testSecret), jwt.MapClaims{"exp": exp}),
		"oversized":    signed(t, jwt.SigningMethodHS256, []byte(testSecret), jwt.MapClaims{"userId": "u", "exp": exp, "pad": strings.Repeat("p", 9000)}),
	}
	before := logLen(t, ts)
	for name, tok := range tokens {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			conn, resp, err := websocket.Dial(ctx, ts.ws+"/?Authorization="+tok, nil)
			if err == nil {
				conn.CloseNow()
				t.Fatal("connection accepted")
			}
			if resp == nil || resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("answer %v, want 401", resp)
			}
		})
	}
	// The header form is refused the same way.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, ts.ws+"/", &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + tokens["expired"]}}})
	if err == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("expired header token: %v %v", err, resp)
	}
	if after := logLen(t, ts); after != before {
		t.Fatalf("refused connections appended %d events", after-before)
	}
	// A plain HTTP request to the WebSocket endpoint is told what it is.
	expectError(t, ts.do(http.MethodGet, "/", "", nil), http.StatusUpgradeRequired, httperr.CodeInvalidRequest)
	// And no token ever reaches the logs.
	for _, tok := range tokens {
		if len(tok) > 20 && strings.Contains(ts.logs.String(), tok) {
			t.Fatal("a token was logged")
		}
	}
}

func TestHeaderTokenAndConnectionCap(t *testing.T) {
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) { c.MaxConnectionsPerUser = 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, ts.ws+"/", &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + ts.token("capped")}}})
	if err != nil {
		t.Fatalf("header token refused: %v", err)
	}
	defer conn.CloseNow()
	ts.dial("capped")
	_, resp, err := websocket.Dial(ctx, ts.ws+"/?Authorization="+ts.token("capped"), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("third connection: %v %v, want 429", err, resp)
	}
	// Another user is not affected by the cap.
	ts.dial("other")
}

func TestBackendEndpointsNeedTheAPIKey(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	for _, path := range []string{"/user/online", "/user/online?userIds=a", "/events"} {
		expectError(t, ts.do(http.MethodGet, path, "", nil), http.StatusUnauthorized, httperr.CodeUnauthorized)
		expectError(t, ts.do(http.MethodGet, path, "wrong-key-0123456789", nil), http.StatusUnauthorized, httperr.CodeUnauthorized)
		// A user's JWT is not a backend credential.
		req, _ := http.NewRequest(http.MethodGet, ts.base+path, nil)
		req.Header.Set("Authorization", "Bearer "+ts.token("u"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%s with a user JWT: %d", path, resp.StatusCode)
		}
	}
	expectError(t, ts.do(http.MethodPost, "/messages", "", []byte(`{"UserId":"a","Body":"x"}`)), http.StatusUnauthorized, httperr.CodeUnauthorized)
	if r := ts.do(http.MethodGet, "/healthz", "", nil); r.status != http.StatusOK {
		t.Fatalf("healthz: %d", r.status)
	}
	expectError(t, ts.do(http.MethodGet, "/nope", testKey, nil), http.StatusNotFound, httperr.CodeNotFound)
	expectError(t, ts.do(http.MethodDelete, "/user/online", testKey, nil), http.StatusMethodNotAllowed, httperr.CodeMethod)
	expectError(t, ts.do(http.MethodGet, "/messages", testKey, nil), http.StatusMethodNotAllowed, httperr.CodeMethod)
}

func TestBadQueriesGet400(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	ids := make([]string, 101)
	for i := range ids {
		ids[i] = fmt.Sprintf("u%d", i)
	}
	cases := map[string]string{
		"limit=0":                           httperr.CodeInvalidLimit,
		"limit=abc":                         httperr.CodeInvalidLimit,
		"limit=5000":                        httperr.CodeInvalidLimit,
		"nextToken=bogus":                   httperr.CodeInvalidToken,
		"userIds=":                          httperr.CodeInvalidUserIDs,
		"userIds=" + strings.Join(ids, ","): httperr.CodeTooManyUserIDs,
	}
	for q, code := range cases {
		expectError(t, ts.do(http.MethodGet, "/user/online?"+q, testKey, nil), http.StatusBadRequest, code)
	}
}

// TestBadMessagesGet400AndEnqueueNothing: each bad body is refused with a JSON error and
// nothing of it is delivered or reported.
func TestBadMessagesGet400AndEnqueueNothing(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	sub := ts.subscribe("0")
	ids := make([]string, 101)
	for i := range ids {
		ids[i] = fmt.Sprintf(`"u%d"`, i)
	}
	bad := map[string]string{
		"malformed JSON":    `{"UserId": "x", "Body": `,
		"not an object":     `42`,
		"UserId wrong type": `{"UserId": 12, "Body": "x"}`,
		"Body wrong type":   `{"UserId": "x", "Body": ["a"]}`,
		"missing UserId":    `{"Body": "x"}`,
		"missing Body":      `{"UserId": "x"}`,
		"body over 128 KB":  `{"UserId": "x", "Body": "` + strings.Repeat("b", 128*1024+1) + `"}`,
		"too many userIds":  `{"UserIds": [` + strings.Join(ids, ",") + `], "Body": "x"}`,
		"bad element":       `[{"UserId": "x", "Body": "ok"}, {"UserId": "", "Body": "x"}]`,
	}
	for name, body := range bad {
		t.Run(name, func(t *testing.T) {
			expectError(t, ts.do(http.MethodPost, "/messages", testKey, []byte(body)), http.StatusBadRequest, httperr.CodeInvalidMessage)
		})
	}
	huge := `{"UserId": "x", "Body": "` + strings.Repeat("b", localrt.MaxRequestBytes) + `"}`
	expectError(t, ts.do(http.MethodPost, "/messages", testKey, []byte(huge)), http.StatusBadRequest, httperr.CodeRequestTooLarge)

	// A body of exactly 128 KB is fine, and a probe shows the queue held nothing else.
	ts.send(`{"UserId": "x", "MessageId": "probe", "Body": "` + strings.Repeat("b", 128*1024) + `"}`)
	waitFor(t, "probe outcome", func() bool { return len(sub.of(events.DetailMessageUndeliverable, "x")) == 1 })
	time.Sleep(100 * time.Millisecond)
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if len(sub.got) != 1 {
		t.Fatalf("events after bad messages: %+v", sub.got)
	}
}

// TestClientFrames: a frame that is not JSON is ignored (the connection lives on and
// still receives messages); frames are recorded as activity; an oversized frame closes
// only its own connection.
func TestClientFrames(t *testing.T) {
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) { c.ActivityInterval = time.Millisecond })
	c := ts.dial("F")
	waitFor(t, "F online", func() bool { s, _ := ts.online("userIds=F"); return s[0].IsOnline })
	ctx := context.Background()
	for _, frame := range []string{"not json", `{"action":"ping"}`, `{"action":42}`, "\x00\xff"} {
		if err := c.conn.Write(ctx, websocket.MessageText, []byte(frame)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	waitFor(t, "activity recorded", func() bool {
		log, _ := ts.srv.Store().Log(ctx)
		n := 0
		for _, e := range log {
			if e.Type == events.TypeActivityRecorded && e.UserID == "F" {
				n++
			}
		}
		return n >= 2
	})
	ts.send(`{"UserId":"F","Body":"still here"}`)
	c.expectFrame(t, "still here")

	big := ts.dial("F")
	// The write itself may fail: the server resets the connection as soon as it has read
	// the frame header.
	_ = big.conn.Write(ctx, websocket.MessageText, []byte(strings.Repeat("x", 200*1024)))
	select {
	case err := <-big.closed:
		if code := closeStatus(err); code != -1 && code != int(websocket.StatusMessageTooBig) {
			t.Fatalf("oversized frame closed with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("oversized frame did not close the connection")
	}
	waitFor(t, "the oversized frame's connection closed in the log", func() bool {
		log, _ := ts.srv.Store().Log(ctx)
		n := 0
		for _, e := range log {
			if e.Type == events.TypeConnectionClosed && e.UserID == "F" {
				n++
			}
		}
		return n == 1
	})
	ts.send(`{"UserId":"F","Body":"after"}`)
	c.expectFrame(t, "after")
}

// TestExpiry: a connection that stops answering pings, and one that stays silent past the
// idle timeout, are closed and recorded as expired.
func TestExpiry(t *testing.T) {
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) {
		c.PingInterval = 100 * time.Millisecond
		c.IdleTimeout = 400 * time.Millisecond
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// This client never reads, so it never answers a ping.
	deaf, _, err := websocket.Dial(ctx, ts.ws+"/?Authorization="+ts.token("deaf"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer deaf.CloseNow()
	// This one answers pings but never sends a frame.
	ts.dial("silent")
	waitFor(t, "both expired", func() bool {
		log, _ := ts.srv.Store().Log(ctx)
		expired := map[string]bool{}
		for _, e := range log {
			if e.Type == events.TypeConnectionClosed && e.Reason == events.ReasonExpired {
				expired[e.UserID] = true
			}
		}
		return expired["deaf"] && expired["silent"]
	})
	waitFor(t, "both offline", func() bool {
		s, _ := ts.online("userIds=deaf,silent")
		return !s[0].IsOnline && !s[1].IsOnline
	})
}

func TestPagination(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	want := []string{"p1", "p2", "p3", "p4", "p5"}
	for _, u := range want {
		ts.dial(u)
	}
	waitFor(t, "all online", func() bool { l, _ := ts.online(""); return len(l) == len(want) })
	var got []string
	query := "limit=2"
	pages := 0
	for {
		list, r := ts.online(query)
		pages++
		for _, s := range list {
			got = append(got, s.UserID)
		}
		next := r.header.Get(onlineapi.NextTokenHeader)
		if next == "" {
			break
		}
		query = "limit=2&nextToken=" + next
	}
	if strings.Join(got, ",") != strings.Join(want, ",") || pages != 3 {
		t.Fatalf("paged %v in %d pages, want %v in 3", got, pages, want)
	}
	// userIds keeps the request's order and answers unknown users.
	s, _ := ts.online("userIds=p3,ghost,p1")
	if len(s) != 3 || s[0].UserID != "p3" || s[1].UserID != "ghost" || s[1].IsOnline || !s[1].LastActivity.IsZero() || !s[2].IsOnline {
		t.Fatalf("userIds answer %+v", s)
	}
}

func TestMessagesToSeveralUsersAndIdempotentIDs(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	sub := ts.subscribe("0")
	m, n := ts.dial("M"), ts.dial("N")
	waitFor(t, "M and N online", func() bool { l, _ := ts.online(""); return len(l) == 2 })
	ids := ts.send(`[{"UserIds":["M","N","gone"],"Body":"all","MessageId":"fan-1"},{"UserId":"M","Body":"second"}]`)
	if len(ids) != 2 || ids[0] != "fan-1" || ids[1] == "" {
		t.Fatalf("message ids %v", ids)
	}
	m.expectFrame(t, "all")
	m.expectFrame(t, "second")
	n.expectFrame(t, "all")
	waitFor(t, "outcomes", func() bool {
		return len(sub.of(events.DetailMessageDelivered, "M")) == 2 && len(sub.of(events.DetailMessageDelivered, "N")) == 1 &&
			len(sub.of(events.DetailMessageUndeliverable, "gone")) == 1
	})
	// Enqueueing the same MessageId again delivers nothing twice.
	ts.send(`{"UserIds":["M","N"],"Body":"all","MessageId":"fan-1"}`)
	ts.send(`{"UserId":"M","Body":"marker"}`)
	m.expectFrame(t, "marker")
}

func TestDashboardIsServed(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	r := ts.do(http.MethodGet, "/ui/", "", nil)
	if r.status != http.StatusOK || !strings.Contains(string(r.body), "<title>wspresence dashboard</title>") ||
		!strings.Contains(r.header.Get("Content-Security-Policy"), "default-src 'self'") {
		t.Fatalf("GET /ui/: %d %q", r.status, r.header)
	}
	for _, f := range []string{"/ui/app.js", "/ui/app.css", "/ui/favicon.ico", "/favicon.ico"} {
		if r := ts.do(http.MethodGet, f, "", nil); r.status != http.StatusOK || len(r.body) < 100 {
			t.Fatalf("GET %s: %d", f, r.status)
		}
	}
	if r := ts.do(http.MethodGet, "/favicon.ico", "", nil); r.header.Get("Content-Type") != "image/x-icon" || http.DetectContentType(r.body) != "image/x-icon" {
		t.Fatalf("favicon: %s, sniffed %s", r.header.Get("Content-Type"), http.DetectContentType(r.body))
	}
	req, _ := http.NewRequest(http.MethodGet, ts.base+"/ui", nil)
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/ui/" {
		t.Fatalf("GET /ui: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
}

// TestSlowReaderCannotStallOthers: a client that stops reading fills its bounded send
// queue and is closed (1013, expired); messages to others keep flowing meanwhile.
func TestSlowReaderCannotStallOthers(t *testing.T) {
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) {
		c.SendQueue = 4
		c.WriteTimeout = 30 * time.Second // the queue, not the write timeout, must catch it
	})
	stallReader(t, ts)
}

// stallReader connects "slow", which never reads, and "fast"; sends both far more than
// the kernel's socket buffers hold; checks that "fast" gets every frame meanwhile, and
// waits for "slow" closed as expired.
func stallReader(t *testing.T, ts *testServer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	slow, _, err := websocket.Dial(ctx, ts.ws+"/?Authorization="+ts.token("slow"), nil) // never reads
	if err != nil {
		t.Fatal(err)
	}
	defer slow.CloseNow()
	fast := ts.dial("fast")
	waitFor(t, "both online", func() bool { l, _ := ts.online(""); return len(l) == 2 })
	// Far more than the kernel's socket buffers hold: 200 frames of 120 KB.
	big := strings.Repeat("x", 120*1024)
	for i := range 200 {
		ts.send(fmt.Sprintf(`[{"UserId":"slow","Body":%q},{"UserId":"fast","Body":"m%d"}]`, big, i))
	}
	for i := range 200 {
		fast.expectFrame(t, fmt.Sprintf("m%d", i))
	}
	waitFor(t, "the slow reader closed as expired", func() bool { return closedAs(ts, "slow", events.ReasonExpired) })
}

// TestInboundRateLimit: a client sending faster than allowed is closed with 1008.
func TestInboundRateLimit(t *testing.T) {
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) { c.InboundRate = 5; c.InboundBurst = 5 })
	c := ts.dial("chatty")
	calm := ts.dial("calm")
	ctx := context.Background()
	for range 50 {
		if err := c.conn.Write(ctx, websocket.MessageText, []byte(`{"action":"ping"}`)); err != nil {
			break
		}
	}
	select {
	case err := <-c.closed:
		if code := closeStatus(err); code != int(websocket.StatusPolicyViolation) {
			t.Fatalf("closed with %v, want 1008", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a flooding client was not closed")
	}
	ts.send(`{"UserId":"calm","Body":"unaffected"}`)
	calm.expectFrame(t, "unaffected")
}

func TestParseClientFrame(t *testing.T) {
	for in, want := range map[string]string{`{"action":"ping"}`: "ping", `{"action":1}`: "", `not json`: "", `[]`: "", ``: ""} {
		if got := localrt.ParseClientFrame([]byte(in)).Action; got != want {
			t.Errorf("ParseClientFrame(%q) = %q, want %q", in, got, want)
		}
	}
}
