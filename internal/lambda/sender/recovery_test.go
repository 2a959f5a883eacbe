package sender_test

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/apigatewaymanagementapi"
	awseventbridge "github.com/aws/aws-sdk-go-v2/service/eventbridge"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/wspresence/wspresence/internal/awsfake"
	"github.com/wspresence/wspresence/internal/bus/eventbridge"
	"github.com/wspresence/wspresence/internal/delivery"
	"github.com/wspresence/wspresence/internal/emf"
	"github.com/wspresence/wspresence/internal/gateway/apigw"
	"github.com/wspresence/wspresence/internal/lambda/connection"
	"github.com/wspresence/wspresence/internal/lambda/sender"
	"github.com/wspresence/wspresence/internal/lambdatest"
	"github.com/wspresence/wspresence/internal/recovery"
	"github.com/wspresence/wspresence/internal/recovery/sqshold"
	"github.com/wspresence/wspresence/internal/store/dynamo"
	"github.com/wspresence/wspresence/internal/store/dynamo/dynamotest"
)

const timerARN = "arn:aws:sqs:us-east-1:123456789012:held"

// client is a recovering client as the library behaves: it keeps its last position and
// drops a message whose offset is not past it in the same epoch.
type client struct {
	epoch     string
	offset    int64
	bodies    []string
	dropped   int
	answers   []recovery.Recovered
	errors    []string
	outOfTurn []string
}

func (c *client) frame(t *testing.T, data []byte) {
	var f struct {
		Type string `json:"type"`
		Code string `json:"code"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		t.Errorf("a frame that is not JSON: %q", data)
		return
	}
	switch f.Type {
	case "message":
		var m recovery.Message
		_ = json.Unmarshal(data, &m)
		if m.Epoch == c.epoch && m.Offset <= c.offset {
			c.dropped++
			return
		}
		if m.Epoch == c.epoch && m.Offset != c.offset+1 {
			c.outOfTurn = append(c.outOfTurn, fmt.Sprintf("%d after %d", m.Offset, c.offset))
		}
		c.epoch, c.offset = m.Epoch, m.Offset
		c.bodies = append(c.bodies, m.Body)
	case "recovered":
		var r recovery.Recovered
		_ = json.Unmarshal(data, &r)
		c.answers = append(c.answers, r)
		c.epoch, c.offset = r.Epoch, r.Offset
	case "error":
		c.errors = append(c.errors, f.Code)
	default:
		t.Errorf("unknown frame %q", data)
	}
}

// world is the AWS runtime's handlers against dynalite and the fakes of API Gateway,
// EventBridge and SQS, with one recovering client.
type world struct {
	t       *testing.T
	store   *dynamo.Store
	send    *sender.Handler
	conn    *connection.Handler
	mu      sync.Mutex
	now     time.Time
	client  client
	mode    map[string]string // connection id -> "up" (default), "drop" (accepted, never read), "gone" (410)
	onPost  func(conn string)
	timers  []string
	outcome map[string][]string // message id -> outcome detail types, in order
	posts   map[string]int
	bodies  map[string][]string // connection id -> what was posted
	seq     int
	busDown bool
}

func (w *world) clock() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.now
}

func (w *world) advance(d time.Duration) {
	w.mu.Lock()
	w.now = w.now.Add(d)
	w.mu.Unlock()
}

func newWorld(t *testing.T, window time.Duration) *world {
	w := &world{t: t, now: time.Now(), mode: map[string]string{}, outcome: map[string][]string{}, posts: map[string]int{}, bodies: map[string][]string{}}
	db := dynamotest.Client(t)
	w.store = dynamo.New(db, dynamotest.NewTables(t, db))
	w.store.RecoveryWindow = window
	w.store.Now = w.clock
	gwSrv := awsfake.New(t, func(req awsfake.Request) awsfake.Response {
		conn := req.Path[strings.LastIndex(req.Path, "/")+1:]
		w.mu.Lock()
		mode, hook := w.mode[conn], w.onPost
		w.posts[conn]++
		w.bodies[conn] = append(w.bodies[conn], string(req.Body))
		if mode == "" || mode == "up" {
			w.client.frame(t, req.Body)
		}
		w.mu.Unlock()
		if hook != nil {
			hook(conn)
		}
		switch mode {
		case "gone":
			return awsfake.Error(http.StatusGone, "GoneException", "")
		case "throttle":
			return awsfake.Error(http.StatusTooManyRequests, "LimitExceededException", "")
		}
		return awsfake.Response{Status: http.StatusOK}
	})
	busSrv := awsfake.New(t, func(req awsfake.Request) awsfake.Response {
		var in struct {
			Entries []struct{ DetailType, Detail string }
		}
		req.Decode(t, &in)
		res := make([]map[string]string, len(in.Entries))
		w.mu.Lock()
		if w.busDown {
			w.mu.Unlock()
			return awsfake.Error(http.StatusInternalServerError, "InternalException", "down")
		}
		for i, e := range in.Entries {
			var d struct{ MessageID string }
			_ = json.Unmarshal([]byte(e.Detail), &d)
			w.outcome[d.MessageID] = append(w.outcome[d.MessageID], e.DetailType)
			res[i] = map[string]string{"EventId": "e"}
		}
		w.mu.Unlock()
		return awsfake.JSON(http.StatusOK, map[string]any{"FailedEntryCount": 0, "Entries": res})
	})
	sqsSrv := awsfake.New(t, func(req awsfake.Request) awsfake.Response {
		var in struct{ MessageBody string }
		req.Decode(t, &in)
		w.mu.Lock()
		w.timers = append(w.timers, in.MessageBody)
		w.mu.Unlock()
		sum := md5.Sum([]byte(in.MessageBody))
		return awsfake.JSON(http.StatusOK, map[string]any{"MessageId": "t", "MD5OfMessageBody": hex.EncodeToString(sum[:])})
	})
	gw := apigw.New(apigatewaymanagementapi.NewFromConfig(gwSrv.Config(), func(o *apigatewaymanagementapi.Options) {
		o.BaseEndpoint = aws.String(gwSrv.URL + "/production")
	}))
	gw.Backoff = time.Millisecond
	pub := eventbridge.New(awseventbridge.NewFromConfig(busSrv.Config()), "bus")
	pub.Backoff = time.Millisecond
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	w.send = &sender.Handler{
		Deliverer: &delivery.Deliverer{Connections: w.store, Poster: gw, Log: w.store, Logger: quiet},
		Publisher: pub, Receipts: w.store, MaxReceives: 3, Logger: quiet, Now: w.clock,
		Recovery: &sender.Recovery{Streams: w.store, Connections: w.store, Poster: gw, Log: w.store, Window: window,
			Timers: sqshold.New(sqs.NewFromConfig(sqsSrv.Config()), "https://sqs.us-east-1.amazonaws.com/123456789012/held", window), TimerQueueARN: timerARN},
	}
	w.conn = &connection.Handler{Log: w.store, Owners: w.store, View: w.store, MaxConnectionsPerUser: 10, Logger: quiet,
		Recovery: &connection.Recovery{Streams: w.store, Connections: w.store, Poster: gw, Log: w.store, Publisher: pub, Window: window, Now: w.clock}}
	return w
}

// connect opens a connection of user 1234 that asks for the subprotocol.
func (w *world) connect(id string) {
	w.t.Helper()
	var req lambdaevents.APIGatewayWebsocketProxyRequest
	lambdatest.Load(w.t, "websocket-connect.json", nil, &req)
	req.RequestContext.ConnectionID = id
	req.RequestContext.RequestTimeEpoch = w.clock().UnixMilli()
	req.Headers["Sec-WebSocket-Protocol"] = "chat, " + recovery.Subprotocol
	resp, err := w.conn.ConnectOrMessage(context.Background(), req)
	if err != nil || resp.StatusCode != http.StatusOK || resp.Headers["Sec-WebSocket-Protocol"] != recovery.Subprotocol {
		w.t.Fatalf("$connect %s: %+v %v", id, resp, err)
	}
}

// recover sends the client's recover request on a connection.
func (w *world) recover(id string) {
	w.t.Helper()
	var req lambdaevents.APIGatewayWebsocketProxyRequest
	lambdatest.Load(w.t, "websocket-recover.json", nil, &req)
	w.mu.Lock()
	if w.client.epoch == "" {
		req.Body = `{"action":"recover"}`
	} else {
		req.Body = fmt.Sprintf(`{"action":"recover","epoch":%q,"offset":%d}`, w.client.epoch, w.client.offset)
	}
	w.mu.Unlock()
	req.RequestContext.ConnectionID = id
	req.RequestContext.RequestTimeEpoch = w.clock().UnixMilli()
	if resp, err := w.conn.ConnectOrMessage(context.Background(), req); err != nil || resp.StatusCode != http.StatusOK {
		w.t.Fatalf("recover on %s: %+v %v", id, resp, err)
	}
}

// sendMessage sends the next message through the sender; it returns the message id.
func (w *world) sendMessage() string {
	w.t.Helper()
	id := w.nextID()
	w.sendID(id)
	return id
}

func (w *world) nextID() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seq++
	return fmt.Sprintf("m-%02d", w.seq)
}

func (w *world) sendID(id string) {
	w.t.Helper()
	ev := lambdaevents.SQSEvent{Records: []lambdaevents.SQSMessage{{MessageId: "q-" + id,
		Body: fmt.Sprintf(`{"UserId":"1234","Body":"body %s","MessageId":%q}`, id, id), Attributes: map[string]string{"ApproximateReceiveCount": "1"}}}}
	if resp, err := w.send.Handle(context.Background(), ev); err != nil || len(resp.BatchItemFailures) != 0 {
		w.t.Errorf("send %s: %+v %v", id, resp, err)
	}
}

// fireTimers hands the held messages' timers sent so far to the sender.
func (w *world) fireTimers() {
	w.t.Helper()
	w.mu.Lock()
	bodies := w.timers
	w.timers = nil
	w.mu.Unlock()
	ev := lambdaevents.SQSEvent{}
	for i, b := range bodies {
		ev.Records = append(ev.Records, lambdaevents.SQSMessage{MessageId: fmt.Sprintf("t-%d", i), Body: b, EventSourceARN: timerARN,
			Attributes: map[string]string{"ApproximateReceiveCount": "1"}})
	}
	if resp, err := w.send.Handle(context.Background(), ev); err != nil || len(resp.BatchItemFailures) != 0 {
		w.t.Fatalf("timers: %+v %v", resp, err)
	}
}

func (w *world) wantBodies(ids ...string) {
	w.t.Helper()
	var want []string
	for _, id := range ids {
		want = append(want, "body "+id)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if strings.Join(w.client.bodies, ",") != strings.Join(want, ",") {
		w.t.Fatalf("the client got\n  %v\nwant\n  %v", w.client.bodies, want)
	}
	if len(w.client.outOfTurn) > 0 {
		w.t.Fatalf("messages out of turn: %v", w.client.outOfTurn)
	}
}

func (w *world) wantOutcomes(want map[string]string) {
	w.t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for id, o := range want {
		if got := w.outcome[id]; len(got) != 1 || got[0] != o {
			w.t.Errorf("outcomes of %s: %v, want one %s", id, got, o)
		}
	}
	for id, got := range w.outcome {
		if _, ok := want[id]; !ok {
			w.t.Errorf("unexpected outcomes of %s: %v", id, got)
		}
	}
}

func ids(from, to int) []string {
	var out []string
	for i := from; i <= to; i++ {
		out = append(out, fmt.Sprintf("m-%02d", i))
	}
	return out
}

func delivered(ids ...string) map[string]string {
	out := map[string]string{}
	for _, id := range ids {
		out[id] = "MessageDelivered"
	}
	return out
}

// TestRecoveryInsideTheWindow: a recovering client cut mid-stream (a 410 from
// PostToConnection, or a silent drop the server notices only later) while the sender
// keeps sending, and messages sent while it reconnects and recovers: after dropping by
// offset it has every message exactly once, in order, and each message has exactly one
// outcome, MessageDelivered (the held ones' published by the replay); their timers,
// fired at the window's end, publish nothing more.
func TestRecoveryInsideTheWindow(t *testing.T) {
	for _, cut := range []string{"gone", "drop"} {
		t.Run(cut, func(t *testing.T) {
			w := newWorld(t, 2*time.Minute)
			w.connect("c1")
			w.recover("c1")
			if a := w.client.answers; len(a) != 1 || a[0].Recovered || a[0].Reason != recovery.ReasonFresh || a[0].Offset != 0 || a[0].Epoch == "" {
				t.Fatalf("fresh start: %+v", a)
			}
			for range 5 {
				w.sendMessage()
			}
			w.wantBodies(ids(1, 5)...)

			w.mu.Lock()
			w.mode["c1"] = cut
			w.mu.Unlock()
			for range 4 { // sent while the client is cut off
				w.advance(time.Second)
				w.sendMessage()
			}
			if cut == "drop" {
				// The drop is noticed later: API Gateway reports the connection gone.
				var req lambdaevents.APIGatewayWebsocketProxyRequest
				lambdatest.Load(t, "websocket-disconnect.json", nil, &req)
				req.RequestContext.ConnectionID = "c1"
				if _, err := w.conn.Disconnect(context.Background(), req); err != nil {
					t.Fatal(err)
				}
				if _, err := w.store.Close(context.Background(), "1234", "c1", w.clock(), "expired"); err != nil {
					t.Fatal(err)
				}
				w.advance(time.Second)
				w.sendMessage() // m-10, no connection at all
			}
			w.advance(10 * time.Second)
			w.connect("c2")
			w.sendMessage() // before its recover: nothing live on c2
			if w.posts["c2"] != 0 {
				t.Fatalf("%d posts to a connection that has not recovered", w.posts["c2"])
			}
			// Messages are sent while the replay runs: one between two replayed frames,
			// one concurrently with the rest of the recover.
			var wg sync.WaitGroup
			var posts atomic.Int32
			w.onPost = func(conn string) {
				if conn != "c2" {
					return
				}
				switch posts.Add(1) {
				case 1:
					w.sendMessage()
				case 2:
					id := w.nextID()
					wg.Add(1)
					go func() { defer wg.Done(); w.sendID(id) }()
				}
			}
			w.recover("c2")
			wg.Wait()
			w.onPost = nil
			last := w.seq
			w.sendMessage() // live
			w.wantBodies(ids(1, last+1)...)
			if a := w.client.answers; len(a) != 2 || !a[1].Recovered || a[1].Replayed == 0 {
				t.Fatalf("answers %+v", a)
			}
			w.advance(2 * time.Minute)
			w.fireTimers()
			w.wantOutcomes(delivered(ids(1, last+1)...))
		})
	}
}

// TestRecoveryOutsideTheWindow: a client that comes back after the window is told once
// (recovered:false, too_old, at the top of its stream) with nothing replayed; the held
// messages are reported MessageUndeliverable once, by their timers; live delivery goes
// on from the top.
func TestRecoveryOutsideTheWindow(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	w.connect("c1")
	w.recover("c1")
	for range 3 {
		w.sendMessage()
	}
	w.mode["c1"] = "gone"
	var metrics bytes.Buffer
	w.send.Metrics = emf.New(&metrics, "wspresence")
	for range 3 {
		w.sendMessage()
	}
	w.send.Metrics = nil
	held := 0.0
	for _, line := range strings.Split(strings.TrimSpace(metrics.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatal(err)
		}
		held += rec["MessagesHeld"].(float64)
	}
	if held != 3 {
		t.Fatalf("MessagesHeld %v, want 3", held)
	}
	w.advance(2*time.Minute + time.Second)
	w.fireTimers()
	w.connect("c2")
	w.recover("c2")
	a := w.client.answers
	if len(a) != 2 || a[1].Recovered || a[1].Reason != recovery.ReasonTooOld || a[1].Offset != 6 || a[1].Epoch != a[0].Epoch {
		t.Fatalf("answers %+v", a)
	}
	w.wantBodies(ids(1, 3)...) // nothing replayed
	w.sendMessage()
	w.wantBodies(append(ids(1, 3), "m-07")...)
	want := delivered("m-01", "m-02", "m-03", "m-07")
	for _, id := range ids(4, 6) {
		want[id] = "MessageUndeliverable"
	}
	w.wantOutcomes(want)
	w.fireTimers() // none left: nothing more
	w.wantOutcomes(want)
}

// TestRawClientsUnchanged: with recovery on, a user whose connections did not opt in
// gets raw bodies and today's outcomes (MessageUndeliverable at once when offline, no
// timer, nothing kept); a raw connection beside an opted-in one still gets the raw body.
func TestRawClientsUnchanged(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	ctx := context.Background()
	var raw lambdaevents.APIGatewayWebsocketProxyRequest
	lambdatest.Load(t, "websocket-connect.json", nil, &raw)
	raw.RequestContext.ConnectionID = "raw"
	raw.RequestContext.RequestTimeEpoch = w.clock().UnixMilli()
	if resp, err := w.conn.Connect(ctx, raw); err != nil || resp.Headers["Sec-WebSocket-Protocol"] != "" {
		t.Fatalf("raw $connect: %+v %v", resp, err)
	}
	w.mode["raw"] = "drop" // its frames are read below, not by the recovering client
	w.sendMessage()
	ev := lambdaevents.SQSEvent{Records: []lambdaevents.SQSMessage{{MessageId: "q-off", Body: `{"UserId":"nobody","Body":"x","MessageId":"m-off"}`,
		Attributes: map[string]string{"ApproximateReceiveCount": "1"}}}}
	if resp, err := w.send.Handle(ctx, ev); err != nil || len(resp.BatchItemFailures) != 0 {
		t.Fatal(resp, err)
	}
	if _, ok, _ := w.store.StreamHead(ctx, "1234"); ok {
		t.Fatal("a stream was created for a user who did not opt in")
	}
	w.connect("c1")
	w.recover("c1")
	w.sendMessage()
	w.wantBodies("m-02")
	w.wantOutcomes(map[string]string{"m-01": "MessageDelivered", "m-02": "MessageDelivered", "m-off": "MessageUndeliverable"})
	if len(w.timers) != 0 {
		t.Fatalf("timers %v", w.timers)
	}
	if got := w.bodies["raw"]; len(got) != 2 || got[0] != "body m-01" || got[1] != "body m-02" {
		t.Fatalf("posted to the raw connection: %v", got)
	}
}

// TestRetriedMessageKeepsItsPosition: a message whose posts fail (throttled) is retried,
// not held, and the retry posts it at the position it was given: the client gets it once,
// the next message follows it without a gap, and it has one outcome.
func TestRetriedMessageKeepsItsPosition(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	w.connect("c1")
	w.recover("c1")
	w.sendMessage()
	w.mu.Lock()
	w.mode["c1"] = "throttle"
	w.mu.Unlock()
	id := w.nextID()
	rec := lambdaevents.SQSMessage{MessageId: "q-" + id, Body: fmt.Sprintf(`{"UserId":"1234","Body":"body %s","MessageId":%q}`, id, id),
		Attributes: map[string]string{"ApproximateReceiveCount": "1"}}
	if resp, _ := w.send.Handle(context.Background(), lambdaevents.SQSEvent{Records: []lambdaevents.SQSMessage{rec}}); len(resp.BatchItemFailures) != 1 {
		t.Fatalf("a throttled message was not retried: %+v", resp)
	}
	if len(w.timers) != 0 {
		t.Fatalf("a message for a connected client was held: %v", w.timers)
	}
	w.mu.Lock()
	w.mode["c1"] = "up"
	w.mu.Unlock()
	rec.Attributes["ApproximateReceiveCount"] = "2"
	if resp, err := w.send.Handle(context.Background(), lambdaevents.SQSEvent{Records: []lambdaevents.SQSMessage{rec}}); err != nil || len(resp.BatchItemFailures) != 0 {
		t.Fatalf("retry: %+v %v", resp, err)
	}
	w.sendMessage()
	w.wantBodies(ids(1, 3)...)
	if w.client.offset != 3 {
		t.Fatalf("the client is at offset %d after 3 messages: the retry took a second position", w.client.offset)
	}
	w.wantOutcomes(delivered(ids(1, 3)...))
}

// TestReplayedOutcomeSurvivesPublishFailure: a recover that replays a held message while
// EventBridge is down leaves it marked replayed; its timer publishes the MessageDelivered
// (once) at the window's end, never MessageUndeliverable.
func TestReplayedOutcomeSurvivesPublishFailure(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	w.connect("c1")
	w.recover("c1")
	w.sendMessage()
	w.mode["c1"] = "gone"
	w.sendMessage() // held
	w.connect("c2")
	w.mu.Lock()
	w.busDown = true
	w.mu.Unlock()
	w.recover("c2")
	w.mu.Lock()
	w.busDown = false
	w.mu.Unlock()
	w.wantBodies(ids(1, 2)...)
	w.wantOutcomes(delivered("m-01"))
	w.advance(2 * time.Minute)
	w.fireTimers()
	w.wantOutcomes(delivered(ids(1, 2)...))
}

// TestNoWindow: with a window of 0 the subprotocol is still selected and frames carry
// positions, nothing is kept or held (a message that reached no connection is
// MessageUndeliverable at once), and a recover behind the top is told too_old.
func TestNoWindow(t *testing.T) {
	w := newWorld(t, 0)
	w.connect("c1")
	w.recover("c1")
	w.sendMessage()
	w.mode["c1"] = "gone"
	w.sendMessage()
	w.connect("c2")
	w.recover("c2")
	a := w.client.answers
	if len(a) != 2 || a[1].Recovered || a[1].Reason != recovery.ReasonTooOld || a[1].Offset != 2 {
		t.Fatalf("answers %+v", a)
	}
	w.sendMessage()
	w.wantBodies("m-01", "m-03")
	w.wantOutcomes(map[string]string{"m-01": "MessageDelivered", "m-02": "MessageUndeliverable", "m-03": "MessageDelivered"})
	if len(w.timers) != 0 {
		t.Fatalf("timers %v", w.timers)
	}
}
