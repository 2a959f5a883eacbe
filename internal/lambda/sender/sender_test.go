package sender_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/apigatewaymanagementapi"
	awseventbridge "github.com/aws/aws-sdk-go-v2/service/eventbridge"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/awsfake"
	"github.com/wspresence/wspresence/internal/bus/eventbridge"
	"github.com/wspresence/wspresence/internal/delivery"
	"github.com/wspresence/wspresence/internal/emf"
	"github.com/wspresence/wspresence/internal/gateway/apigw"
	"github.com/wspresence/wspresence/internal/lambda/connection"
	"github.com/wspresence/wspresence/internal/lambda/sender"
	"github.com/wspresence/wspresence/internal/lambdatest"
	"github.com/wspresence/wspresence/internal/schematest"
	"github.com/wspresence/wspresence/internal/store/dynamo"
	"github.com/wspresence/wspresence/internal/store/dynamo/dynamotest"
)

type rig struct {
	h       *sender.Handler
	store   *dynamo.Store
	stream  *dynamotest.Stream
	apigw   *awsfake.Server
	bus     *awsfake.Server
	mu      sync.Mutex
	posted  map[string][]string
	busDown atomic.Bool
}

func (r *rig) postsTo(path string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.posted[path]
}

func newRig(t *testing.T, answer func(path string) awsfake.Response) *rig {
	db := dynamotest.Client(t)
	tables := dynamotest.NewTables(t, db)
	r := &rig{store: dynamo.New(db, tables), stream: dynamotest.NewStream(db, tables.Events), posted: map[string][]string{}}
	r.apigw = awsfake.New(t, func(req awsfake.Request) awsfake.Response {
		r.mu.Lock()
		r.posted[req.Path] = append(r.posted[req.Path], string(req.Body))
		r.mu.Unlock()
		return answer(req.Path)
	})
	r.bus = awsfake.New(t, func(req awsfake.Request) awsfake.Response {
		if r.busDown.Load() {
			return awsfake.Error(http.StatusInternalServerError, "InternalException", "down")
		}
		var in struct{ Entries []any }
		_ = json.Unmarshal(req.Body, &in)
		res := make([]map[string]string, len(in.Entries))
		for i := range res {
			res[i] = map[string]string{"EventId": "e"}
		}
		return awsfake.JSON(http.StatusOK, map[string]any{"FailedEntryCount": 0, "Entries": res})
	})
	gw := apigw.New(apigatewaymanagementapi.NewFromConfig(r.apigw.Config(), func(o *apigatewaymanagementapi.Options) {
		o.BaseEndpoint = aws.String(r.apigw.URL + "/production")
	}))
	gw.Backoff = time.Millisecond
	pub := eventbridge.New(awseventbridge.NewFromConfig(r.bus.Config()), "bus")
	pub.Backoff = time.Millisecond
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	r.h = &sender.Handler{
		Deliverer:   &delivery.Deliverer{Connections: r.store, Poster: gw, Log: r.store, Logger: quiet},
		Publisher:   pub,
		Receipts:    r.store,
		MaxReceives: 3,
		Logger:      quiet,
	}
	return r
}

func (r *rig) open(t *testing.T, user string, conns ...string) {
	for _, c := range conns {
		if _, err := r.store.Apply(context.Background(), events.Opened(user, c, time.Now(), "", "")); err != nil {
			t.Fatal(err)
		}
	}
}

// published returns the PutEvents entries received, as envelopes checked against schemas.
func (r *rig) published(t *testing.T) []map[string]any {
	var out []map[string]any
	for _, req := range r.bus.Requests() {
		var in struct {
			Entries []struct{ DetailType, Detail, Source string }
		}
		req.Decode(t, &in)
		for _, e := range in.Entries {
			env := map[string]any{"version": "0", "id": "x", "detail-type": e.DetailType, "source": e.Source, "account": "1",
				"time": "2026-11-26T10:00:00Z", "region": "us-east-1", "resources": []string{}, "detail": json.RawMessage(e.Detail)}
			data, _ := json.Marshal(env)
			schematest.CheckEnvelope(t, data)
			var d map[string]any
			_ = json.Unmarshal([]byte(e.Detail), &d)
			d["detail-type"] = e.DetailType
			out = append(out, d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i]["userId"].(string) < out[j]["userId"].(string) })
	return out
}

func load(t *testing.T) lambdaevents.SQSEvent {
	var ev lambdaevents.SQSEvent
	lambdatest.Load(t, "sqs-event.json", nil, &ev)
	return ev
}

func TestDeliversHealsAndReports(t *testing.T) {
	r := newRig(t, func(path string) awsfake.Response {
		if strings.HasSuffix(path, "/gone-1=") {
			return awsfake.Error(http.StatusGone, "GoneException", "")
		}
		return awsfake.Response{Status: http.StatusOK}
	})
	r.open(t, "1234", "live-1=", "gone-1=")
	var emfOut bytes.Buffer
	r.h.Metrics = emf.New(&emfOut, "wspresence")
	r.h.Now = func() time.Time { return time.UnixMilli(1795687200000 + 250) } // 250 ms after the first SentTimestamp
	ev := load(t)
	resp, err := r.h.Handle(context.Background(), ev)
	if err != nil {
		t.Fatal(err)
	}
	// Only the poison message (a UserId of the wrong type) is reported failed.
	if len(resp.BatchItemFailures) != 1 || resp.BatchItemFailures[0].ItemIdentifier != ev.Records[2].MessageId {
		t.Fatalf("failures %+v", resp.BatchItemFailures)
	}
	if got := r.postsTo("/production/@connections/live-1="); len(got) != 1 || got[0] != "hello from the queue" {
		t.Fatalf("posted to live-1: %v", got)
	}
	if got := r.postsTo("/production/@connections/gone-1="); len(got) != 1 {
		t.Fatalf("posts to gone-1: %v", got)
	}
	// The 410 became ConnectionClosed{gone} in the log.
	var gone bool
	for _, rec := range r.stream.Next(t) {
		img := rec.Change.NewImage
		if img["type"].String() == "ConnectionClosed" && img["connectionId"].String() == "gone-1=" && img["reason"].String() == "gone" {
			gone = true
		}
	}
	if !gone {
		t.Fatal("no ConnectionClosed{gone} appended for the 410")
	}
	pub := r.published(t)
	if len(pub) != 2 {
		t.Fatalf("published %v", pub)
	}
	if pub[0]["detail-type"] != "MessageDelivered" || pub[0]["userId"] != "1234" || pub[0]["connections"] != float64(1) ||
		pub[0]["messageId"] != ev.Records[0].MessageId {
		t.Fatalf("delivered event %v", pub[0])
	}
	if pub[1]["detail-type"] != "MessageUndeliverable" || pub[1]["userId"] != "5678" || pub[1]["reason"] != "offline" || pub[1]["messageId"] != "order-42" {
		t.Fatalf("undeliverable event %v", pub[1])
	}
	// One embedded-metric record for the batch.
	var rec map[string]any
	if err := json.Unmarshal(emfOut.Bytes(), &rec); err != nil {
		t.Fatalf("EMF output %q: %v", emfOut.String(), err)
	}
	for name, want := range map[string]float64{"MessagesDelivered": 1, "MessagesUndeliverable": 1, "MessagesFailed": 1, "ConnectionsGone": 1} {
		if rec[name] != want {
			t.Errorf("EMF %s = %v, want %v", name, rec[name], want)
		}
	}
	if rec["Function"] != "sender" || rec["DeliveryLatency"] != 250.0 {
		t.Errorf("EMF record %v", rec)
	}
}

func TestThrottledPostsAreRetriedThenReported(t *testing.T) {
	r := newRig(t, func(string) awsfake.Response {
		return awsfake.Error(http.StatusTooManyRequests, "LimitExceededException", "")
	})
	r.open(t, "1234", "c=")
	ev := load(t)
	ev.Records = ev.Records[:1]
	resp, _ := r.h.Handle(context.Background(), ev)
	if len(resp.BatchItemFailures) != 1 {
		t.Fatalf("a throttled message must be retried: %+v", resp)
	}
	if len(r.bus.Requests()) != 0 {
		t.Fatal("an outcome was published for a message that will be retried")
	}
	// On its last receive it is reported undeliverable instead.
	ev.Records[0].Attributes["ApproximateReceiveCount"] = "3"
	resp, _ = r.h.Handle(context.Background(), ev)
	if len(resp.BatchItemFailures) != 0 {
		t.Fatalf("last receive: %+v", resp)
	}
	if pub := r.published(t); len(pub) != 1 || pub[0]["reason"] != "failed" {
		t.Fatalf("published %v", pub)
	}
}

// TestPublishFailureRetriesTheMessage: PutEvents failing after a successful post fails
// the record, and the retries publish the outcome without posting again: the connection
// receives the frame once, and MessageDelivered is published (once accepted) with the id
// of the first attempt.
func TestPublishFailureRetriesTheMessage(t *testing.T) {
	r := newRig(t, func(string) awsfake.Response { return awsfake.Response{Status: http.StatusOK} })
	ev := load(t)
	ev.Records = ev.Records[1:2]
	msg, err := events.DecodeMessage([]byte(ev.Records[0].Body))
	if err != nil {
		t.Fatal(err)
	}
	user := msg.Recipients()[0]
	r.open(t, user, "only=")
	r.busDown.Store(true)
	for range 2 { // the first receive, and a retry while PutEvents is still down
		resp, _ := r.h.Handle(context.Background(), ev)
		if len(resp.BatchItemFailures) != 1 || resp.BatchItemFailures[0].ItemIdentifier != ev.Records[0].MessageId {
			t.Fatalf("failures %+v", resp.BatchItemFailures)
		}
	}
	r.busDown.Store(false)
	for range 2 { // the retry that gets through, and a redelivery of the record
		if resp, _ := r.h.Handle(context.Background(), ev); len(resp.BatchItemFailures) != 0 {
			t.Fatalf("retry: %+v", resp.BatchItemFailures)
		}
	}
	if posts := r.postsTo("/production/@connections/only="); len(posts) != 1 {
		t.Fatalf("the connection received %d posts, want the frame once", len(posts))
	}
	pub := r.published(t)
	if len(pub) == 0 {
		t.Fatal("no outcome published")
	}
	for _, d := range pub {
		if d["detail-type"] != "MessageDelivered" || d["eventId"] != pub[0]["eventId"] {
			t.Fatalf("published %v, want MessageDelivered with one id", pub)
		}
	}
}

// A message whose text is not UTF-8 (an escaped unpaired surrogate: SQS carries only
// valid characters, so this is how such text arrives) is never delivered as rewritten
// text: it is reported failed, so after the queue's maximum receives it lands in the DLQ.
func TestMessagesThatAreNotUTF8GoToTheDLQ(t *testing.T) {
	r := newRig(t, func(string) awsfake.Response { return awsfake.Response{Status: http.StatusOK} })
	r.open(t, "1234", "live-1=")
	bodies := []string{
		`{"UserId":"1234","Body":"\ud800"}`,
		`{"UserId":"1234","MessageId":"\udc00","Body":"x"}`,
		`{"UserIds":["1234","\ud83d"],"Body":"x"}`,
	}
	ev := lambdaevents.SQSEvent{}
	for i, b := range bodies {
		ev.Records = append(ev.Records, lambdaevents.SQSMessage{MessageId: fmt.Sprintf("m-%d", i), Body: b,
			Attributes: map[string]string{"ApproximateReceiveCount": "3"}})
	}
	resp, err := r.h.Handle(context.Background(), ev)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.BatchItemFailures) != len(bodies) {
		t.Fatalf("failures %+v, want every message", resp.BatchItemFailures)
	}
	if got := r.postsTo("/production/@connections/live-1="); len(got) != 0 {
		t.Fatalf("posted %q", got)
	}
	if pub := r.published(t); len(pub) != 0 {
		t.Fatalf("published %v", pub)
	}
}

// Read-your-connect: a message accepted right after $connect returned reaches the new
// connection, with the stream consumer (the projector) paused: $connect folded its open
// into the user's state itself.
func TestMessageRightAfterConnectReachesIt(t *testing.T) {
	r := newRig(t, func(string) awsfake.Response { return awsfake.Response{Status: http.StatusOK} })
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	connect := &connection.Handler{Log: r.store, Owners: r.store, View: r.store, MaxConnectionsPerUser: 10, Logger: quiet}
	var req lambdaevents.APIGatewayWebsocketProxyRequest
	lambdatest.Load(t, "websocket-connect.json", nil, &req)
	if resp, err := connect.Connect(context.Background(), req); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("$connect: %+v %v", resp, err)
	}
	// No projector ran: the event table's stream is untouched.
	ev := lambdaevents.SQSEvent{Records: []lambdaevents.SQSMessage{{MessageId: "m-1", Body: `{"UserId":"1234","Body":"right after connect"}`,
		Attributes: map[string]string{"ApproximateReceiveCount": "1"}}}}
	resp, err := r.h.Handle(context.Background(), ev)
	if err != nil || len(resp.BatchItemFailures) != 0 {
		t.Fatalf("sender: %+v %v", resp, err)
	}
	if got := r.postsTo("/production/@connections/" + req.RequestContext.ConnectionID); len(got) != 1 || got[0] != "right after connect" {
		t.Fatalf("posted %v", got)
	}
	if pub := r.published(t); len(pub) != 1 || pub[0]["detail-type"] != "MessageDelivered" {
		t.Fatalf("published %v", pub)
	}
	if recs := r.stream.Next(t); len(recs) != 1 {
		t.Fatalf("the open was not appended to the log (%d records)", len(recs))
	}
}
