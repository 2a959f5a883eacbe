package sweeper_test

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/apigatewaymanagementapi"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodbstreams"
	awseventbridge "github.com/aws/aws-sdk-go-v2/service/eventbridge"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/awsfake"
	"github.com/wspresence/wspresence/internal/bus/eventbridge"
	"github.com/wspresence/wspresence/internal/gateway/apigw"
	"github.com/wspresence/wspresence/internal/grace/sqsdelay"
	"github.com/wspresence/wspresence/internal/lambda/grace"
	"github.com/wspresence/wspresence/internal/lambda/projector"
	"github.com/wspresence/wspresence/internal/lambda/publisher"
	"github.com/wspresence/wspresence/internal/lambda/sweeper"
	"github.com/wspresence/wspresence/internal/lambdatest"
	"github.com/wspresence/wspresence/internal/presence"
	"github.com/wspresence/wspresence/internal/store/dynamo"
	"github.com/wspresence/wspresence/internal/store/dynamo/dynamotest"
	"github.com/wspresence/wspresence/internal/stream/ddbstreams"
	"github.com/wspresence/wspresence/internal/stream/failures"
)

const testGrace = 5 * time.Second

var t0 = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

// rig is the AWS runtime's presence path on dynalite: the store, both streams (built from
// what was written), the outbox relay and the reconciler, with EventBridge and API
// Gateway's Management API as fakes that can fail.
type rig struct {
	db     *dynamodb.Client
	store  *dynamo.Store
	events *dynamotest.Stream
	view   *dynamotest.ViewStream
	relay  *publisher.Handler
	rec    *sweeper.Handler
	quiet  *slog.Logger

	mu       sync.Mutex
	now      time.Time
	busDown  bool
	accepted map[string]int // event id -> times PutEvents accepted it
	kinds    map[string]string
	gone     map[string]bool // connections the gateway reports gone
	asked    []string
	dead     []string // bodies of the timers in the grace dead-letter queue
	inFlight map[int]bool
	failed   []string // bodies of the stream failure queue
	failedIn map[int]bool
	kept     []lambdaevents.DynamoDBEventRecord // what the streams still keep
}

func newRig(t *testing.T) *rig {
	db, view := dynamotest.ClientWithViewStream(t)
	tables := dynamotest.NewTables(t, db)
	r := &rig{db: db, view: view, events: dynamotest.NewStream(db, tables.Events), now: t0,
		accepted: map[string]int{}, kinds: map[string]string{}, gone: map[string]bool{},
		quiet: slog.New(slog.NewTextHandler(io.Discard, nil))}
	view.Clock = r.clock
	r.store = dynamo.New(db, tables)
	r.store.Grace = testGrace
	r.store.Now = r.clock
	bus := awsfake.New(t, func(req awsfake.Request) awsfake.Response {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.busDown {
			return awsfake.Error(http.StatusInternalServerError, "InternalException", "unavailable")
		}
		var in struct {
			Entries []struct{ DetailType, Detail string }
		}
		_ = json.Unmarshal(req.Body, &in)
		res := make([]map[string]string, len(in.Entries))
		for i, e := range in.Entries {
			var d struct{ EventID string }
			_ = json.Unmarshal([]byte(e.Detail), &d)
			r.accepted[d.EventID]++
			r.kinds[d.EventID] = e.DetailType
			res[i] = map[string]string{"EventId": "e"}
		}
		return awsfake.JSON(http.StatusOK, map[string]any{"FailedEntryCount": 0, "Entries": res})
	})
	pub := eventbridge.New(awseventbridge.NewFromConfig(bus.Config()), "bus")
	pub.Backoff = time.Millisecond
	gw := awsfake.New(t, func(req awsfake.Request) awsfake.Response {
		r.mu.Lock()
		defer r.mu.Unlock()
		id := strings.TrimPrefix(req.Path, "/prod/@connections/")
		r.asked = append(r.asked, id)
		if r.gone[id] {
			return awsfake.Error(http.StatusGone, "GoneException", "")
		}
		return awsfake.JSON(http.StatusOK, map[string]any{"connectedAt": "2026-11-26T11:00:00Z"})
	})
	gateway := apigw.New(apigatewaymanagementapi.NewFromConfig(gw.Config(), func(o *apigatewaymanagementapi.Options) {
		o.BaseEndpoint = aws.String(gw.URL + "/prod")
	}))
	dlq := queueFake(t, &r.mu, &r.dead, &r.inFlight)
	failureQueue := queueFake(t, &r.mu, &r.failed, &r.failedIn)
	streams := awsfake.New(t, func(req awsfake.Request) awsfake.Response {
		r.mu.Lock()
		defer r.mu.Unlock()
		switch req.Target {
		case "DynamoDBStreams_20120810.DescribeStream": // the view table's stream: one shard
			return awsfake.JSON(http.StatusOK, map[string]any{"StreamDescription": map[string]any{
				"StreamArn": viewStreamARN, "Shards": []map[string]string{{"ShardId": "shardId-view"}}}})
		case "DynamoDBStreams_20120810.GetShardIterator":
			var in struct{ ShardID, ShardIteratorType, SequenceNumber string }
			_ = json.Unmarshal(req.Body, &in)
			switch in.ShardIteratorType {
			case "TRIM_HORIZON":
				return awsfake.JSON(http.StatusOK, map[string]any{"ShardIterator": "view>"})
			case "AFTER_SEQUENCE_NUMBER":
				return awsfake.JSON(http.StatusOK, map[string]any{"ShardIterator": "view>" + in.SequenceNumber})
			}
			return awsfake.JSON(http.StatusOK, map[string]any{"ShardIterator": in.SequenceNumber})
		case "DynamoDBStreams_20120810.GetRecords":
			var in struct{ ShardIterator string }
			_ = json.Unmarshal(req.Body, &in)
			var recs []lambdaevents.DynamoDBEventRecord
			if after, ok := strings.CutPrefix(in.ShardIterator, "view>"); ok {
				for _, rec := range r.view.All() {
					if after == "" || ddbstreams.Compare(rec.Change.SequenceNumber, after) > 0 {
						recs = append(recs, rec)
					}
				}
				return awsfake.JSON(http.StatusOK, map[string]any{"Records": streamRecords(recs), "NextShardIterator": "view>end"})
			}
			for _, rec := range r.kept {
				if ddbstreams.Compare(rec.Change.SequenceNumber, in.ShardIterator) >= 0 {
					recs = append(recs, rec)
				}
			}
			return awsfake.JSON(http.StatusOK, map[string]any{"Records": recs})
		}
		return awsfake.Error(http.StatusBadRequest, "UnknownOperation", req.Target)
	})
	r.relay = &publisher.Handler{Publisher: pub, Sticker: r.store, Probes: r.store, Logger: r.quiet}
	r.rec = &sweeper.Handler{View: r.store, Log: r.store, Gateway: gateway, Publisher: pub,
		DeadTimers: sqsdelay.NewDeadLetters(sqs.NewFromConfig(dlq.Config()), "https://sqs.us-east-1.amazonaws.com/1/grace-dlq"),
		Failures:   failures.New(sqs.NewFromConfig(failureQueue.Config()), "https://sqs.us-east-1.amazonaws.com/1/stream-failures"),
		Streams:    ddbstreams.New(dynamodbstreams.NewFromConfig(streams.Config())), ViewStream: viewStreamARN,
		Grace: testGrace, GraceMargin: dynamo.DefaultGraceMargin, StaleAfter: dynamo.DefaultStaleAfter,
		OutboxAge: dynamo.DefaultOutboxAge, Retention: dynamo.DefaultTombstoneRetention, Limit: 100, PassEvery: time.Nanosecond,
		Now: r.clock, Logger: r.quiet}
	return r
}

const viewStreamARN = "arn:aws:dynamodb:us-east-1:1:table/view/stream/x"

// streamRecords is recs as GetRecords answers them: creation times in epoch seconds.
func streamRecords(recs []lambdaevents.DynamoDBEventRecord) []map[string]any {
	out := make([]map[string]any, len(recs))
	for i, rec := range recs {
		raw, _ := json.Marshal(rec)
		var m map[string]any
		_ = json.Unmarshal(raw, &m)
		if d, ok := m["dynamodb"].(map[string]any); ok {
			d["ApproximateCreationDateTime"] = float64(rec.Change.ApproximateCreationDateTime.Unix())
		}
		out[i] = m
	}
	return out
}

// queueFake is an SQS queue (JSON protocol) over bodies: a received message is hidden
// until deleted.
func queueFake(t *testing.T, mu *sync.Mutex, bodies *[]string, inFlight *map[int]bool) *awsfake.Server {
	return awsfake.New(t, func(req awsfake.Request) awsfake.Response {
		mu.Lock()
		defer mu.Unlock()
		if *inFlight == nil {
			*inFlight = map[int]bool{}
		}
		switch req.Target {
		case "AmazonSQS.ReceiveMessage":
			var msgs []map[string]string
			for i, body := range *bodies {
				if body != "" && !(*inFlight)[i] {
					(*inFlight)[i] = true
					sum := md5.Sum([]byte(body))
					msgs = append(msgs, map[string]string{"MessageId": strconv.Itoa(i), "ReceiptHandle": strconv.Itoa(i), "Body": body, "MD5OfBody": hex.EncodeToString(sum[:])})
				}
			}
			return awsfake.JSON(http.StatusOK, map[string]any{"Messages": msgs})
		case "AmazonSQS.DeleteMessage":
			var in struct{ ReceiptHandle string }
			_ = json.Unmarshal(req.Body, &in)
			i, _ := strconv.Atoi(in.ReceiptHandle)
			(*bodies)[i] = ""
			return awsfake.JSON(http.StatusOK, map[string]any{})
		}
		return awsfake.Error(http.StatusBadRequest, "InvalidAction", req.Target)
	})
}

// giveUp is the event source mapping giving up on a batch: the records stay in the
// stream (kept) and their position goes to the failure queue, arrived at arrived.
func (r *rig) giveUp(streamARN string, recs []lambdaevents.DynamoDBEventRecord, arrived time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.kept = append(r.kept, recs...)
	info := map[string]any{"shardId": "shardId-1", "startSequenceNumber": recs[0].Change.SequenceNumber,
		"endSequenceNumber": recs[len(recs)-1].Change.SequenceNumber, "approximateArrivalOfFirstRecord": arrived.Format(time.RFC3339),
		"batchSize": len(recs), "streamArn": streamARN}
	body, _ := json.Marshal(map[string]any{"requestContext": map[string]any{"condition": "RetryAttemptsExhausted", "approximateInvokeCount": 11},
		"version": "1.0", "DDBStreamBatchInfo": info})
	r.failed = append(r.failed, string(body))
}

func (r *rig) clock() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.now
}

func (r *rig) setNow(t time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.now = t
}

func (r *rig) setBusDown(down bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.busDown = down
}

// connect is $connect: the open folded at once, then appended.
func (r *rig) connect(t *testing.T, user, conn string, at time.Time) {
	t.Helper()
	e := events.Opened(user, conn, at, "", "")
	if _, err := r.store.Admit(context.Background(), e, 10); err != nil {
		t.Fatal(err)
	}
	if _, err := r.store.Append(context.Background(), e); err != nil {
		t.Fatal(err)
	}
}

// project runs the projector over the event table's new records with the given ports
// and returns its batch item failures.
func (r *rig) project(t *testing.T, view projector.View, starter projector.GraceStarter) int {
	t.Helper()
	h := &projector.Handler{View: view, Grace: starter, Logger: r.quiet, Now: r.clock}
	resp, err := h.Handle(context.Background(), lambdaevents.DynamoDBEvent{Records: r.events.Next(t)})
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.BatchItemFailures)
}

// publish runs the outbox relay over the view table's new records.
func (r *rig) publish(t *testing.T) int {
	t.Helper()
	resp, err := r.relay.Handle(context.Background(), lambdaevents.DynamoDBEvent{Records: r.view.Next()})
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.BatchItemFailures)
}

func (r *rig) reconcile(t *testing.T) sweeper.Result {
	t.Helper()
	var scheduled json.RawMessage
	lambdatest.Load(t, "scheduled-event.json", nil, &scheduled)
	res, err := r.rec.Handle(context.Background(), scheduled)
	if err != nil {
		t.Fatalf("reconciler: %+v %v", res, err)
	}
	return res
}

// ids returns how often PutEvents accepted each event id of the given kind.
func (r *rig) ids(kind events.DetailType) map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for id, n := range r.accepted {
		if r.kinds[id] == string(kind) {
			out[id] = n
		}
	}
	return out
}

type graces struct {
	mu      sync.Mutex
	started []presence.Grace
	fail    bool
}

func (g *graces) StartGrace(_ context.Context, userID string, since time.Time) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.fail {
		return errors.New("StartExecution: ServiceUnavailable")
	}
	g.started = append(g.started, presence.Grace{UserID: userID, Since: since})
	return nil
}

// failing is a view whose writes all fail (throttled past every retry).
type failing struct{}

func (failing) Apply(context.Context, events.ConnectionEvent) (presence.Effects, error) {
	return presence.Effects{}, errors.New("ProvisionedThroughputExceededException")
}

func (failing) ExpireGrace(context.Context, string, time.Time, time.Time) (presence.Effects, error) {
	return presence.Effects{}, errors.New("ProvisionedThroughputExceededException")
}

func (failing) State(context.Context, string) (presence.State, error) {
	return presence.State{}, errors.New("ProvisionedThroughputExceededException")
}

func (failing) FlagGrace(context.Context, string) error {
	return errors.New("ProvisionedThroughputExceededException")
}

func wantOnce(t *testing.T, got map[string]int, want ...string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("published %v, want exactly %v once each", got, want)
	}
	for _, id := range want {
		if got[id] != 1 {
			t.Fatalf("published %v, want exactly %v once each", got, want)
		}
	}
}

// TestDroppedProjectorRecordIsRepaired: the close of a connection is in the log but its
// stream record failed every retry and was dropped, so the view holds a ghost. The next
// reconciler run asks API Gateway about every live connection: the ghost's is gone, the
// log holds its close, which is folded (not appended again) and the overdue grace period
// ended: exactly one UserOffline, by id, with the close's time. A connection whose
// $disconnect never came and that API Gateway reports gone is swept in the same run. A
// run with nothing to repair changes nothing.
func TestDroppedProjectorRecordIsRepaired(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	r.connect(t, "ghost", "g1=", t0)
	r.connect(t, "lost", "l1=", t0)
	r.connect(t, "alive", "a1=", t0)
	if n := r.project(t, r.store, &graces{}); n != 0 {
		t.Fatalf("%d failures folding the opens", n)
	}
	if n := r.publish(t); n != 0 {
		t.Fatal("UserOnline not published")
	}
	closedAt := t0.Add(time.Minute)
	if _, err := r.store.Append(ctx, events.Closed("ghost", "g1=", closedAt, events.ReasonClient)); err != nil {
		t.Fatal(err)
	}
	// The projector fails the close's record on every attempt; the stream drops it.
	if n := r.project(t, failing{}, &graces{}); n != 1 {
		t.Fatalf("%d failures, want the close's record", n)
	}
	if live, _ := r.store.LiveConnections(ctx, "ghost"); len(live) != 1 {
		t.Fatalf("live %v: the fault did not leave a ghost", live)
	}
	r.mu.Lock()
	r.gone["g1="], r.gone["l1="] = true, true
	r.mu.Unlock()

	r.setNow(t0.Add(5 * time.Minute))
	res := r.reconcile(t)
	if res.Checked != 3 || res.Scanned != 3 || res.Passes != 1 || res.Refolded != 1 || res.Swept != 1 || res.GracesEnded != 1 || res.Failed != 0 {
		t.Fatalf("run: %+v, want every connection checked, the ghost refolded, the lost one swept, one grace ended", res)
	}
	if n := r.publish(t); n != 0 {
		t.Fatal("relay failed")
	}
	for user, want := range map[string]int{"ghost": 0, "lost": 0, "alive": 1} {
		if live, err := r.store.LiveConnections(ctx, user); err != nil || len(live) != want {
			t.Fatalf("%s live %v %v, want %d", user, live, err, want)
		}
	}
	// The ghost's offline is decided by the events' times; the swept one's grace period
	// began now, and its timer is the projector's, on the swept close's record.
	if n := r.project(t, r.store, &graces{}); n != 0 {
		t.Fatal("folding the swept close failed")
	}
	wantOnce(t, r.ids(events.DetailUserOffline), events.NewUserOffline("ghost", closedAt, t0).ID())

	// The swept user's timer is lost too: the next run past its deadline ends it.
	r.setNow(r.clock().Add(testGrace + dynamo.DefaultGraceMargin + time.Second))
	if res := r.reconcile(t); res.GracesEnded != 1 || res.Refolded+res.Swept != 0 {
		t.Fatalf("second run: %+v", res)
	}
	r.publish(t)
	if got := r.ids(events.DetailUserOffline); len(got) != 2 || got[events.NewUserOffline("ghost", closedAt, t0).ID()] != 1 {
		t.Fatalf("UserOffline %v", got)
	}
	before := r.ids(events.DetailUserOffline)
	if res := r.reconcile(t); res.Refolded+res.Swept+res.GracesEnded+res.Republished != 0 || res.Checked != 1 {
		t.Fatalf("a run with nothing to repair repaired: %+v", res)
	}
	r.publish(t)
	if after := r.ids(events.DetailUserOffline); len(after) != len(before) {
		t.Fatalf("published again: %v", after)
	}
}

// TestLostGraceTimerIsRepaired: a grace period whose timer never started (SendMessage
// failed past the record's retries; the projector flagged it) ends within one reconciler
// run after its deadline plus the margin, never before; one whose timer failed every
// receive (the grace function failing; the timer in the dead-letter queue) ends in the
// next run. Each user is announced offline once, with the id the timer would have used.
func TestLostGraceTimerIsRepaired(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	r.connect(t, "nostart", "n1=", t0)
	r.connect(t, "failedrun", "f1=", t0)
	r.project(t, r.store, &graces{})
	r.publish(t)
	closedAt := t0.Add(time.Second)
	if _, err := r.store.Append(ctx, events.Closed("nostart", "n1=", closedAt, events.ReasonClient)); err != nil {
		t.Fatal(err)
	}
	if n := r.project(t, r.store, &graces{fail: true}); n != 1 {
		t.Fatalf("%d failures, want the close whose timer could not start", n)
	}
	if _, err := r.store.Append(ctx, events.Closed("failedrun", "f1=", closedAt, events.ReasonClient)); err != nil {
		t.Fatal(err)
	}
	started := &graces{}
	if n := r.project(t, r.store, started); n != 0 || len(started.started) != 1 {
		t.Fatalf("failures %d, started %v", n, started.started)
	}
	g := started.started[0]
	timer := &grace.Handler{View: failing{}, Logger: r.quiet}
	body, _ := json.Marshal(sqsdelay.Input{UserID: g.UserID, OfflineSince: strconv.FormatInt(g.Since.UnixNano(), 10), GraceSeconds: int(testGrace / time.Second)})
	for n := range 5 { // every receive of the grace queue, then the dead-letter queue
		resp, err := timer.HandleQueue(ctx, lambdaevents.SQSEvent{Records: []lambdaevents.SQSMessage{{MessageId: "t", Body: string(body),
			Attributes: map[string]string{"ApproximateReceiveCount": strconv.Itoa(n + 1)}}}})
		if err != nil || len(resp.BatchItemFailures) != 1 {
			t.Fatal("the grace function did not fail")
		}
	}
	r.mu.Lock()
	r.dead = append(r.dead, string(body))
	r.mu.Unlock()
	r.publish(t)

	// The dead timer is run at once, at its deadline; the period whose timer never
	// started waits for its margin.
	r.setNow(closedAt.Add(testGrace + dynamo.DefaultGraceMargin - time.Second))
	if res := r.reconcile(t); res.GracesEnded != 1 || res.DeadTimers != 1 {
		t.Fatalf("first run: %+v, want the dead timer's period ended and the other not yet", res)
	}
	r.setNow(closedAt.Add(testGrace + dynamo.DefaultGraceMargin))
	if res := r.reconcile(t); res.GracesEnded != 1 || res.Failed != 0 || res.DeadTimers != 0 {
		t.Fatalf("second run: %+v, want the flagged grace period ended", res)
	}
	r.publish(t)
	r.reconcile(t)
	r.publish(t)
	wantOnce(t, r.ids(events.DetailUserOffline),
		events.NewUserOffline("nostart", closedAt, t0).ID(), events.NewUserOffline("failedrun", closedAt, t0).ID())
}

// TestOutboxOutlivesTheStream: PutEvents fails for longer than the stream keeps records.
// The relay fails its records (bounded retries, then the stream drops them; here they are
// simply never delivered again) and the clock moves 48 hours. After PutEvents recovers,
// the reconciler publishes every transition from the user items, exactly once by id,
// over as many bounded runs as it takes, and marks them published: the relay of its own
// writes and later runs publish nothing more.
func TestOutboxOutlivesTheStream(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	r.setBusDown(true)
	users := []string{"o1", "o2", "o3", "o4", "o5"}
	var want []string
	for _, u := range users {
		r.connect(t, u, u+"-c=", t0)
		want = append(want, events.NewUserOnline(u, u+"-c=", t0).ID())
	}
	r.project(t, r.store, &graces{})
	closedAt := t0.Add(time.Minute)
	for _, u := range users {
		if _, err := r.store.Append(ctx, events.Closed(u, u+"-c=", closedAt, events.ReasonClient)); err != nil {
			t.Fatal(err)
		}
	}
	started := &graces{}
	r.project(t, r.store, started)
	for _, g := range started.started {
		if _, err := r.store.ExpireGrace(ctx, g.UserID, g.Since, g.Since.Add(testGrace)); err != nil {
			t.Fatal(err)
		}
		want = append(want, events.NewUserOffline(g.UserID, closedAt, t0).ID())
	}
	if len(want) != 10 {
		t.Fatalf("%d transitions", len(want))
	}
	records := r.view.Next()
	for range 3 {
		resp, err := r.relay.Handle(ctx, lambdaevents.DynamoDBEvent{Records: records})
		if err != nil || len(resp.BatchItemFailures) == 0 {
			t.Fatalf("the relay got through a failing PutEvents: %+v %v", resp, err)
		}
	}
	// The records expire; 48 hours later PutEvents works again.
	r.setBusDown(false)
	r.setNow(t0.Add(48 * time.Hour))
	r.rec.Limit = 2
	runs := 0
	for {
		res := r.reconcile(t)
		runs++
		if res.Due == 0 {
			break
		}
		if runs > 10 {
			t.Fatal("the reconciler does not converge")
		}
	}
	if runs < 3 {
		t.Fatalf("%d runs for 5 users at 2 a run: the limit did not bound a run", runs)
	}
	if n := r.publish(t); n != 0 {
		t.Fatal("relay failed")
	}
	got := r.ids(events.DetailUserOnline)
	for id, n := range r.ids(events.DetailUserOffline) {
		got[id] = n
	}
	wantOnce(t, got, want...)
	for _, u := range users {
		p, err := r.store.Pending(ctx, u)
		if err != nil || len(p.Outbox) != 0 || len(p.State.Conns) != 0 {
			t.Fatalf("%s after recovery: %+v %v, want an empty outbox and its tombstone pruned", u, p, err)
		}
	}
}

// TestFailedStreamBatchesAreReplayed: the projector gave up on a close's record (its
// view failing every retry) and the relay on a write's record (the function itself
// failing, so nothing was kept in the item): the failure queue holds their positions. The
// next reconciler run, seconds later, reads the records back from the stream: the close is
// folded and its grace period ended (exactly one UserOffline, by id), the write's
// UserOnline is published with its id; a batch older than the stream's 24 hours is
// counted and dropped. A second run does nothing.
func TestFailedStreamBatchesAreReplayed(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	r.connect(t, "closer", "c1=", t0)
	r.publish(t)
	closedAt := t0.Add(time.Minute)
	if _, err := r.store.Append(ctx, events.Closed("closer", "c1=", closedAt, events.ReasonClient)); err != nil {
		t.Fatal(err)
	}
	recs := r.events.Next(t)
	var closes []lambdaevents.DynamoDBEventRecord
	for _, rec := range recs {
		if rec.Change.NewImage["type"].String() == string(events.TypeConnectionClosed) {
			closes = append(closes, rec)
		}
	}
	h := &projector.Handler{View: failing{}, Grace: &graces{}, Logger: r.quiet, Now: r.clock}
	if resp, _ := h.Handle(ctx, lambdaevents.DynamoDBEvent{Records: closes}); len(resp.BatchItemFailures) != 1 {
		t.Fatalf("the projector did not fail the close: %+v", resp)
	}
	r.giveUp("arn:aws:dynamodb:us-east-1:1:table/events/stream/x", closes, closedAt)

	r.connect(t, "opener", "o1=", closedAt)
	view := r.view.Next() // the relay crashes on it: nothing kept in the item
	if len(view) != 1 {
		t.Fatalf("%d view records", len(view))
	}
	r.giveUp("arn:aws:dynamodb:us-east-1:1:table/view/stream/x", view, closedAt)
	r.giveUp("arn:aws:dynamodb:us-east-1:1:table/view/stream/x", view, closedAt.Add(-25*time.Hour))

	r.setNow(closedAt.Add(testGrace + time.Second))
	res := r.reconcile(t)
	if res.FailedBatches != 3 || res.Replayed != 2 || res.Expired != 1 || res.Failed != 0 {
		t.Fatalf("run: %+v, want 2 batches replayed (a record each) and 1 expired", res)
	}
	r.publish(t)
	if live, _ := r.store.LiveConnections(ctx, "closer"); len(live) != 0 {
		t.Fatalf("the replayed close was not folded: %v", live)
	}
	wantOnce(t, r.ids(events.DetailUserOffline), events.NewUserOffline("closer", closedAt, t0).ID())
	if got := r.ids(events.DetailUserOnline)[events.NewUserOnline("opener", "o1=", closedAt).ID()]; got != 1 {
		t.Fatalf("the crashed relay's UserOnline published %d times", got)
	}
	if res := r.reconcile(t); res.FailedBatches != 0 || res.GracesEnded != 0 {
		t.Fatalf("second run: %+v", res)
	}
}
