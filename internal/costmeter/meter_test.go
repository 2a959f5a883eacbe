package costmeter_test

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/apigatewaymanagementapi"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	awseventbridge "github.com/aws/aws-sdk-go-v2/service/eventbridge"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/golang-jwt/jwt/v5"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/auth"
	"github.com/wspresence/wspresence/internal/awsfake"
	"github.com/wspresence/wspresence/internal/bus/eventbridge"
	"github.com/wspresence/wspresence/internal/costmeter"
	"github.com/wspresence/wspresence/internal/delivery"
	"github.com/wspresence/wspresence/internal/deploy"
	"github.com/wspresence/wspresence/internal/emf"
	"github.com/wspresence/wspresence/internal/gateway/apigw"
	"github.com/wspresence/wspresence/internal/grace/sqsdelay"
	"github.com/wspresence/wspresence/internal/lambda/authorizer"
	"github.com/wspresence/wspresence/internal/lambda/connection"
	"github.com/wspresence/wspresence/internal/lambda/grace"
	"github.com/wspresence/wspresence/internal/lambda/projector"
	"github.com/wspresence/wspresence/internal/lambda/publisher"
	"github.com/wspresence/wspresence/internal/lambda/sender"
	"github.com/wspresence/wspresence/internal/lambdatest"
	"github.com/wspresence/wspresence/internal/presence"
	"github.com/wspresence/wspresence/internal/recovery/sqshold"
	"github.com/wspresence/wspresence/internal/store/dynamo"
	"github.com/wspresence/wspresence/internal/store/dynamo/dynamotest"
)

const (
	lifetime   = 10 * time.Minute
	batchSize  = 100 // the stream event source mappings' BatchSize
	queueBatch = 10  // the SQS event source mapping's BatchSize and a SendMessageBatch
	secret     = "cost-meter-secret"
)

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

// memory reads each function's memory size from the template (its own, or the Globals').
func memory(t *testing.T) map[string]int {
	tpl := template(t)
	builds := builds(t)
	global, _ := strconv.Atoi(fmt.Sprint(tpl["Globals"].(map[string]any)["Function"].(map[string]any)["MemorySize"]))
	out := map[string]int{}
	for id, r := range tpl.Resources() {
		if r["Type"] != "AWS::Serverless::Function" {
			continue
		}
		mb := global
		if v, ok := deploy.Props(r)["MemorySize"]; ok {
			mb, _ = strconv.Atoi(fmt.Sprint(v))
		}
		out[builds[id]] = mb
	}
	return out
}

func template(t *testing.T) deploy.Template {
	tpl, err := deploy.Load(filepath.Join(lambdatest.Root(t), "template.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return tpl
}

// parameter is a template parameter's default.
func parameter(t *testing.T, tpl deploy.Template, name string) int {
	p, ok := tpl["Parameters"].(map[string]any)[name].(map[string]any)
	n, err := strconv.Atoi(fmt.Sprint(p["Default"]))
	if !ok || err != nil {
		t.Fatalf("parameter %s: %v", name, p)
	}
	return n
}

// logLevels reads each function's application and system log levels from the template
// (its own LoggingConfig, or the Globals'; a Ref to a parameter is its default).
func logLevels(t *testing.T, tpl deploy.Template) (app, system map[string]string) {
	builds := builds(t)
	resolve := func(v any) string {
		if m, ok := v.(map[string]any); ok {
			if ref, ok := m["Ref"].(string); ok {
				return fmt.Sprint(tpl["Parameters"].(map[string]any)[ref].(map[string]any)["Default"])
			}
		}
		if v == nil {
			return "INFO"
		}
		return fmt.Sprint(v)
	}
	global, _ := tpl["Globals"].(map[string]any)["Function"].(map[string]any)["LoggingConfig"].(map[string]any)
	app, system = map[string]string{}, map[string]string{}
	for id, r := range tpl.Resources() {
		if r["Type"] != "AWS::Serverless::Function" {
			continue
		}
		lc := global
		if own, ok := deploy.Props(r)["LoggingConfig"].(map[string]any); ok {
			lc = own
		}
		app[builds[id]], system[builds[id]] = resolve(lc["ApplicationLogLevel"]), resolve(lc["SystemLogLevel"])
	}
	return app, system
}

// requestID stands for the Lambda request id the functions' logger adds to each line.
const requestID = "8f5b1c2e-6d3a-4b7e-9c0f-2a1d3e4f5a6b"

// logger is a function's logger, as the runtime writes it (JSON, with the request id),
// into the meter.
func (r *rig) logger(fn string) *slog.Logger {
	return slog.New(slog.NewJSONHandler(r.meter.Logs(fn), &slog.HandlerOptions{Level: slog.LevelDebug})).With("requestId", requestID)
}

// metrics is a function's embedded-metric writer, into the meter.
func (r *rig) metrics(fn string) *emf.Logger { return emf.New(r.meter.Logs(fn), "wspresence") }

// builds maps the template's function ids to their services (the Makefile's targets).
func builds(t *testing.T) map[string]string {
	mk, err := os.ReadFile(filepath.Join(lambdatest.Root(t), "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	builds := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^build-(\w+):\s*;\s*\$\(call lambda,(\w+)\)`).FindAllStringSubmatch(string(mk), -1) {
		builds[m[1]] = m[2]
	}
	return builds
}

// rig is the AWS runtime's handlers wired to dynalite and fakes, every call counted.
type rig struct {
	t      *testing.T
	meter  *costmeter.Meter
	store  *dynamo.Store
	stream *dynamotest.Stream
	quiet  *slog.Logger

	authorizer *authorizer.Handler
	conn       *connection.Handler
	projector  *projector.Handler
	relay      *publisher.Handler
	grace      *grace.Handler
	sender     *sender.Handler

	now    time.Time // the recovery clock (messages are kept for the window from it)
	mu     sync.Mutex
	timers []presence.Grace
	held   []string // the held messages' timers sent
	// reconnect is a $connect handler on an unmetered store: a reconnection is the
	// connections' bill, its recover the messages'.
	reconnect *connection.Handler
}

type staticSecret string

func (s staticSecret) Get(context.Context) (string, error) { return string(s), nil }
func (s staticSecret) Refresh(context.Context) (string, bool, error) {
	return string(s), false, nil
}

// StartGrace stands in for the timer: it records the period (the meter runs it later).
func (r *rig) StartGrace(_ context.Context, userID string, since time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.timers = append(r.timers, presence.Grace{UserID: userID, Since: since})
	return nil
}

func newRig(t *testing.T) *rig {
	endpoint := dynamotest.Endpoint(t)
	raw := dynamotest.Client(t)
	tables := dynamotest.NewTables(t, raw)
	meter := costmeter.New(memory(t), tables.View, []costmeter.Index{
		{Name: dynamo.OnlineIndex, Hash: "online", Range: "pk", Projection: []string{"live", "lastActivity"}},
		{Name: dynamo.RepairIndex, Hash: "rs", Range: "due"},
	})
	cfg := awsfake.Config(endpoint)
	cfg.Retryer = nil
	db := dynamodb.NewFromConfig(cfg, meter.DynamoDB(func(ctx context.Context, table string, key map[string]types.AttributeValue) map[string]types.AttributeValue {
		out, err := raw.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(table), Key: key, ConsistentRead: aws.Bool(true)})
		if err != nil {
			return nil
		}
		return out.Item
	}))
	r := &rig{t: t, meter: meter, quiet: slog.New(slog.NewTextHandler(io.Discard, nil)), stream: dynamotest.NewStream(raw, tables.Events)}
	tpl := template(t)
	meter.LogLevels(logLevels(t, tpl))
	meter.Retain(tables.Events, float64(parameter(t, tpl, "EventRetentionDays"))*24/costmeter.HoursPerMonth)
	meter.Retain("logs", float64(parameter(t, tpl, "LogRetentionDays"))*24/costmeter.HoursPerMonth)
	r.store = dynamo.New(db, tables)
	r.store.Grace = 5 * time.Second
	bus := awsfake.New(t, func(req awsfake.Request) awsfake.Response {
		var in struct{ Entries []any }
		_ = json.Unmarshal(req.Body, &in)
		meter.Add("eventbridge", float64(len(in.Entries)))
		res := make([]map[string]string, len(in.Entries))
		for i := range res {
			res[i] = map[string]string{"EventId": "e"}
		}
		return awsfake.JSON(http.StatusOK, map[string]any{"FailedEntryCount": 0, "Entries": res})
	})
	pub := eventbridge.New(awseventbridge.NewFromConfig(bus.Config()), "bus")
	gw := awsfake.New(t, func(req awsfake.Request) awsfake.Response {
		meter.Add("apigw-messages", 1)
		return awsfake.Response{Status: http.StatusOK}
	})
	gateway := apigw.New(apigatewaymanagementapi.NewFromConfig(gw.Config(), func(o *apigatewaymanagementapi.Options) {
		o.BaseEndpoint = aws.String(gw.URL + "/production")
	}))
	heldQueue := awsfake.New(t, func(req awsfake.Request) awsfake.Response {
		var in struct{ MessageBody string }
		_ = json.Unmarshal(req.Body, &in)
		meter.Add("sqs", 1)
		r.mu.Lock()
		r.held = append(r.held, in.MessageBody)
		r.mu.Unlock()
		sum := md5.Sum([]byte(in.MessageBody))
		return awsfake.JSON(http.StatusOK, map[string]any{"MessageId": "t", "MD5OfMessageBody": hex.EncodeToString(sum[:])})
	})
	// Recovery is on, as the template's default (RecoveryWindowSeconds 120).
	r.store.RecoveryWindow = recoveryWindow
	r.authorizer = &authorizer.Handler{Secrets: staticSecret(secret), Policy: auth.DefaultPolicy(), Logger: r.logger("authorizer"), Metrics: r.metrics("authorizer")}
	r.conn = &connection.Handler{Log: r.store, Owners: r.store, View: r.store, MaxConnectionsPerUser: 10, Logger: r.logger("connect"), Metrics: r.metrics("connect"),
		Recovery: &connection.Recovery{Streams: r.store, Connections: r.store, Poster: gateway, Log: r.store, Publisher: pub, Window: recoveryWindow,
			Now: func() time.Time { return r.now }}}
	unmetered := dynamo.New(raw, tables)
	unmetered.Grace, unmetered.RecoveryWindow = r.store.Grace, recoveryWindow
	r.reconnect = &connection.Handler{Log: unmetered, Owners: unmetered, View: unmetered, MaxConnectionsPerUser: 10, Logger: r.quiet,
		Recovery: &connection.Recovery{Streams: unmetered, Connections: unmetered, Poster: gateway, Log: unmetered, Publisher: pub, Window: recoveryWindow,
			Now: func() time.Time { return r.now }}}
	r.projector = &projector.Handler{View: r.store, Grace: r, Logger: r.logger("projector"), Metrics: r.metrics("projector")}
	r.relay = &publisher.Handler{Publisher: pub, Sticker: r.store, Probes: r.store, Logger: r.logger("publisher"), Metrics: r.metrics("publisher")}
	r.grace = &grace.Handler{View: r.store, Logger: r.logger("grace")}
	r.sender = &sender.Handler{Deliverer: &delivery.Deliverer{Connections: r.store, Poster: gateway, Log: r.store, Logger: r.logger("sender")},
		Publisher: pub, Receipts: r.store, MaxReceives: 5, Logger: r.logger("sender"), Metrics: r.metrics("sender"), Now: func() time.Time { return r.now },
		Recovery: &sender.Recovery{Streams: r.store, Connections: r.store, Poster: gateway, Log: r.store, Window: recoveryWindow,
			Timers:        sqshold.New(sqs.NewFromConfig(heldQueue.Config()), "https://sqs.us-east-1.amazonaws.com/123456789012/held", recoveryWindow),
			TimerQueueARN: heldARN}}
	r.now = time.Now()
	return r
}

const (
	recoveryWindow = 2 * time.Minute
	heldARN        = "arn:aws:sqs:us-east-1:123456789012:held"
)

func token(t *testing.T, user string) string {
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"userId": user, "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func wsRequest(route, user, conn string, at time.Time) lambdaevents.APIGatewayWebsocketProxyRequest {
	var req lambdaevents.APIGatewayWebsocketProxyRequest
	req.RequestContext.RouteKey = route
	req.RequestContext.ConnectionID = conn
	req.RequestContext.RequestTimeEpoch = at.UnixMilli()
	req.RequestContext.Authorizer = map[string]any{"userId": user}
	if route == "$disconnect" {
		req.RequestContext.DisconnectStatusCode = 1001
	}
	return req
}

// streams hands the event table's and the view table's new records to the projector and
// the relay in batches, as the event source mappings do, counting an invocation per batch
// of what passes the mappings' filters.
func (r *rig) streams() {
	t := r.t
	for {
		var recs []lambdaevents.DynamoDBEventRecord
		for _, rec := range r.stream.Next(t) {
			// The projector's event filter: only closes.
			if rec.Change.NewImage["type"].String() == string(events.TypeConnectionClosed) {
				recs = append(recs, rec)
			}
		}
		for start := 0; start < len(recs); start += batchSize {
			batch := recs[start:min(start+batchSize, len(recs))]
			r.meter.InvokeBatch("projector", len(batch), func() {
				if resp, err := r.projector.Handle(context.Background(), lambdaevents.DynamoDBEvent{Records: batch}); err != nil || len(resp.BatchItemFailures) > 0 {
					t.Fatalf("projector: %+v %v", resp, err)
				}
			})
		}
		var view []lambdaevents.DynamoDBEventRecord
		for _, rec := range r.meter.ViewRecords() {
			// The relay's event filter: only the writes that recorded transitions.
			if f := rec.Change.NewImage["fresh"]; f.DataType() == lambdaevents.DataTypeString && f.String() == "1" {
				view = append(view, rec)
			}
		}
		for start := 0; start < len(view); start += batchSize {
			batch := view[start:min(start+batchSize, len(view))]
			r.meter.InvokeBatch("publisher", len(batch), func() {
				if resp, err := r.relay.Handle(context.Background(), lambdaevents.DynamoDBEvent{Records: batch}); err != nil || len(resp.BatchItemFailures) > 0 {
					t.Fatalf("relay: %+v %v", resp, err)
				}
			})
		}
		if len(recs) == 0 && len(view) == 0 {
			return
		}
	}
}

// timersFire runs the started grace timers as the grace queue's mapping delivers them:
// each timer one SendMessage (delayed), received, handled and deleted in batches of ten.
func (r *rig) timersFire() {
	r.mu.Lock()
	timers := r.timers
	r.timers = nil
	r.mu.Unlock()
	for start := 0; start < len(timers); start += queueBatch {
		var ev lambdaevents.SQSEvent
		for i, g := range timers[start:min(start+queueBatch, len(timers))] {
			body, _ := json.Marshal(sqsdelay.Input{UserID: g.UserID, OfflineSince: strconv.FormatInt(g.Since.UnixNano(), 10), GraceSeconds: int(r.store.Grace / time.Second)})
			ev.Records = append(ev.Records, lambdaevents.SQSMessage{MessageId: fmt.Sprintf("timer-%d", start+i), Body: string(body),
				Attributes: map[string]string{"ApproximateReceiveCount": "1"}})
		}
		r.meter.Add("sqs", float64(len(ev.Records))) // the sends
		r.meter.AddBatch("sqs", 2, len(ev.Records))  // one ReceiveMessage, one DeleteMessageBatch
		r.meter.InvokeBatch("grace", len(ev.Records), func() {
			if resp, err := r.grace.HandleQueue(context.Background(), ev); err != nil || len(resp.BatchItemFailures) > 0 {
				r.t.Fatalf("grace: %+v %v", resp, err)
			}
		})
	}
}

// each runs f for every user, two at once (the meter times each invocation by its wall
// time: more at once on a 2-core machine would bill the contention).
func each(users []string, f func(i int, user string)) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 2)
	for i, u := range users {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			f(i, u)
		}()
	}
	wg.Wait()
}

// lifecycles drives n 10-minute connections of distinct users (authorize, connect, k
// frames spread over the lifetime, disconnect, the grace period, offline), every stream
// and timer run as AWS would run them, and returns the bill per connection.
func lifecycles(t *testing.T, n, k int) (*costmeter.Meter, float64) {
	r := newRig(t)
	ctx := context.Background()
	users := make([]string, n)
	for i := range users {
		users[i] = fmt.Sprintf("user-%d-%d", k, i)
	}
	each(users, func(i int, u string) {
		conn := fmt.Sprintf("conn-%d=", i)
		var req lambdaevents.APIGatewayCustomAuthorizerRequestTypeRequest
		req.QueryStringParameters = map[string]string{"Authorization": token(t, u)}
		req.MethodArn = "arn:aws:execute-api:us-east-1:123456789012:api/production/$connect"
		r.meter.Invoke("authorizer", func() {
			if _, err := r.authorizer.Handle(ctx, req); err != nil {
				t.Error(err)
			}
		})
		r.meter.Invoke("connect", func() {
			if resp, err := r.conn.ConnectOrMessage(ctx, wsRequest("$connect", u, conn, t0)); err != nil || resp.StatusCode != 200 {
				t.Errorf("connect: %+v %v", resp, err)
			}
		})
	})
	r.streams()
	for j := range k {
		at := t0.Add(lifetime * time.Duration(j+1) / time.Duration(k+1))
		each(users, func(i int, u string) {
			r.meter.Add("apigw-messages", 1)
			r.meter.Invoke("connect", func() {
				if resp, err := r.conn.ConnectOrMessage(ctx, wsRequest("$default", u, fmt.Sprintf("conn-%d=", i), at)); err != nil || resp.StatusCode != 200 {
					t.Errorf("frame: %+v %v", resp, err)
				}
			})
		})
		r.streams()
	}
	each(users, func(i int, u string) {
		r.meter.Invoke("disconnect", func() {
			if resp, err := r.conn.Disconnect(ctx, wsRequest("$disconnect", u, fmt.Sprintf("conn-%d=", i), t0.Add(lifetime))); err != nil || resp.StatusCode != 200 {
				t.Errorf("disconnect: %+v %v", resp, err)
			}
		})
	})
	r.meter.Add("connection-minutes", float64(n)*lifetime.Minutes())
	r.streams()
	r.timersFire()
	r.streams()
	// Every user went online and offline once.
	if got, want := r.meter.Count("eventbridge"), float64(2*n); got != want {
		t.Fatalf("%v events published, want %v (UserOnline and UserOffline each)", got, want)
	}
	st, err := r.store.Users(ctx, users)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.Online() {
			t.Fatalf("%s still online", s.UserID)
		}
	}

	floor := float64(n) * (lifetime.Minutes()*costmeter.Prices.APIGatewayConnectionMinute + float64(k)*costmeter.Prices.APIGatewayMessage)
	return r.meter, floor / float64(n)
}

// messages drives m messages, each to one user holding one connection, sent in batches
// of ten as a producer does, received and deleted in batches of ten by the sender's
// mapping, and returns the bill per message.
func messages(t *testing.T, m int) (*costmeter.Meter, float64) {
	r := newRig(t)
	ctx := context.Background()
	users := make([]string, m)
	for i := range users {
		users[i] = fmt.Sprintf("recipient-%d", i)
		if _, err := r.store.Admit(ctx, events.Opened(users[i], fmt.Sprintf("rc-%d=", i), t0, "", ""), 10); err != nil {
			t.Fatal(err)
		}
	}
	r.meter.Reset() // the connections are the lifecycle's bill, not the messages'
	for start := 0; start < m; start += queueBatch {
		var ev lambdaevents.SQSEvent
		for i := start; i < min(start+queueBatch, m); i++ {
			body, _ := json.Marshal(map[string]string{"UserId": users[i], "Body": "hello " + users[i]})
			ev.Records = append(ev.Records, lambdaevents.SQSMessage{MessageId: fmt.Sprintf("m-%d", i), Body: string(body),
				Attributes: map[string]string{"ApproximateReceiveCount": "1", "SentTimestamp": strconv.FormatInt(time.Now().UnixMilli(), 10)}})
		}
		r.meter.AddBatch("sqs", 3, len(ev.Records)) // SendMessageBatch, ReceiveMessage, DeleteMessageBatch
		r.meter.InvokeBatch("sender", len(ev.Records), func() {
			if resp, err := r.sender.Handle(ctx, ev); err != nil || len(resp.BatchItemFailures) > 0 {
				t.Fatalf("sender: %+v %v", resp, err)
			}
		})
	}
	if got := r.meter.Count("apigw-messages"); got != float64(m) {
		t.Fatalf("%v posts for %d messages", got, m)
	}
	floor := float64(m) * (costmeter.Prices.APIGatewayMessage + costmeter.Prices.EventBridgeEvent)
	return r.meter, floor / float64(m)
}

// optIn connects each user with one connection that asks for wspresence.v1 and recovers
// fresh (ready for live frames), unmetered.
func (r *rig) optIn(users []string) {
	ctx := context.Background()
	each(users, func(i int, u string) {
		conn := fmt.Sprintf("rc-%d=", i)
		req := wsRequest("$connect", u, conn, r.now)
		req.Headers = map[string]string{"Sec-WebSocket-Protocol": "wspresence.v1"}
		if resp, err := r.reconnect.ConnectOrMessage(ctx, req); err != nil || resp.Headers["Sec-WebSocket-Protocol"] != "wspresence.v1" {
			r.t.Errorf("connect: %+v %v", resp, err)
		}
		rec := wsRequest("recover", u, conn, r.now)
		rec.Body = `{"action":"recover"}`
		if _, err := r.reconnect.ConnectOrMessage(ctx, rec); err != nil {
			r.t.Error(err)
		}
	})
}

// send sends one message to each user through the sender, in batches of ten as the
// queue's mapping delivers them.
func (r *rig) send(users []string, tag string) {
	ctx := context.Background()
	for start := 0; start < len(users); start += queueBatch {
		var ev lambdaevents.SQSEvent
		for i := start; i < min(start+queueBatch, len(users)); i++ {
			body, _ := json.Marshal(map[string]string{"UserId": users[i], "Body": "hello " + users[i]})
			ev.Records = append(ev.Records, lambdaevents.SQSMessage{MessageId: fmt.Sprintf("m-%s-%d", tag, i), Body: string(body),
				Attributes: map[string]string{"ApproximateReceiveCount": "1", "SentTimestamp": strconv.FormatInt(time.Now().UnixMilli(), 10)}})
		}
		r.meter.AddBatch("sqs", 3, len(ev.Records)) // SendMessageBatch, ReceiveMessage, DeleteMessageBatch
		r.meter.InvokeBatch("sender", len(ev.Records), func() {
			if resp, err := r.sender.Handle(ctx, ev); err != nil || len(resp.BatchItemFailures) > 0 {
				r.t.Fatalf("sender: %+v %v", resp, err)
			}
		})
	}
}

// recovering drives m messages to users whose connections opted in to recovery. Live:
// each user holds a ready connection and gets one message frame with its position.
// Replayed: each user's connection dropped; it gets ten messages while away (each held,
// its timer started), reconnects inside the window and recovers them (one recover, the
// replay, MessageDelivered), and the timers fire at the window's end. It returns the bill
// per message.
func recovering(t *testing.T, m int, replayed bool) (*costmeter.Meter, float64) {
	r := newRig(t)
	ctx := context.Background()
	per := 1
	if replayed {
		per = 10
	}
	users := make([]string, max(m/per, 1))
	for i := range users {
		users[i] = fmt.Sprintf("recovering-%d", i)
	}
	r.optIn(users)
	if replayed {
		each(users, func(i int, u string) {
			if _, err := r.reconnect.Disconnect(ctx, wsRequest("$disconnect", u, fmt.Sprintf("rc-%d=", i), r.now)); err != nil {
				t.Error(err)
			}
			if _, err := r.reconnect.View.Apply(ctx, events.Closed(u, fmt.Sprintf("rc-%d=", i), r.now, events.ReasonExpired)); err != nil {
				t.Error(err)
			}
		})
		r.now = r.now.Add(2 * dynamo.StaleFlag) // the closed connections' flags are old
	}
	r.meter.Reset() // the connections are the lifecycle's bill, not the messages'
	for k := range per {
		r.send(users, strconv.Itoa(k))
	}
	if replayed {
		if got := len(r.held); got != len(users)*per {
			t.Fatalf("%d messages held, want %d", got, len(users)*per)
		}
		each(users, func(i int, u string) {
			conn := fmt.Sprintf("rc2-%d=", i)
			req := wsRequest("$connect", u, conn, r.now)
			req.Headers = map[string]string{"Sec-WebSocket-Protocol": "wspresence.v1"}
			if _, err := r.reconnect.ConnectOrMessage(ctx, req); err != nil {
				t.Error(err)
			}
			head, _, err := r.store.StreamHead(ctx, u)
			if err != nil {
				t.Error(err)
			}
			rec := wsRequest("recover", u, conn, r.now)
			rec.Body = fmt.Sprintf(`{"action":"recover","epoch":%q,"offset":0}`, head.Epoch)
			r.meter.Add("apigw-messages", 1) // the recover frame
			r.meter.Invoke("connect", func() {
				if _, err := r.conn.ConnectOrMessage(ctx, rec); err != nil {
					t.Error(err)
				}
			})
		})
		r.now = r.now.Add(recoveryWindow)
		for start := 0; start < len(r.held); start += queueBatch {
			var ev lambdaevents.SQSEvent
			for i, b := range r.held[start:min(start+queueBatch, len(r.held))] {
				ev.Records = append(ev.Records, lambdaevents.SQSMessage{MessageId: fmt.Sprintf("held-%d", start+i), Body: b, EventSourceARN: heldARN,
					Attributes: map[string]string{"ApproximateReceiveCount": "1"}})
			}
			r.meter.Add("sqs", 2) // one ReceiveMessage, one DeleteMessageBatch
			r.meter.Invoke("sender", func() {
				if resp, err := r.sender.Handle(ctx, ev); err != nil || len(resp.BatchItemFailures) > 0 {
					t.Fatalf("timers: %+v %v", resp, err)
				}
			})
		}
	}
	total := len(users) * per
	// Every message reached its connection once (live, or replayed: the posts out plus
	// the recover frames in) and has one outcome.
	wantPosts := float64(total)
	if replayed {
		wantPosts += float64(2 * len(users)) // each recover's frame in and its recovered frame out
	}
	if got := r.meter.Count("apigw-messages"); got != wantPosts {
		t.Fatalf("%v API Gateway messages for %d messages, want %v", got, total, wantPosts)
	}
	if got := r.meter.Count("eventbridge"); got != float64(total) {
		t.Fatalf("%v outcomes published for %d messages", got, total)
	}
	floor := float64(total) * (costmeter.Prices.APIGatewayMessage + costmeter.Prices.EventBridgeEvent)
	return r.meter, floor / float64(total)
}

// thresholds are the figures the meter must not exceed (dollars per million), kept in
// the repository.
type thresholds map[string]float64

func env(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// TestCostMeter prints the bill per million 10-minute connections (10 frames, and none)
// and per million messages, beside the API Gateway floor, and fails past the thresholds
// in thresholds.json (checked in a run without the race detector, whose instrumentation
// slows the handlers: their measured durations are not what Lambda bills). COST_LIFECYCLES and COST_MESSAGES set the traffic (make cost drives
// more than CI).
func TestCostMeter(t *testing.T) {
	raw, err := os.ReadFile("thresholds.json")
	if err != nil {
		t.Fatal(err)
	}
	var limit thresholds
	if err := json.Unmarshal(raw, &limit); err != nil {
		t.Fatal(err)
	}
	n, m := env("COST_LIFECYCLES", 200), env("COST_MESSAGES", 500)
	type result struct {
		name                string
		per                 float64
		bill                []costmeter.Line
		floor, cost, sparse float64
	}
	var results []result
	var meters []*costmeter.Meter
	for _, sc := range []struct {
		name string
		run  func() (*costmeter.Meter, float64)
		per  int
	}{
		{"connections-frames", func() (*costmeter.Meter, float64) { return lifecycles(t, n, 10) }, n},
		{"connections-idle", func() (*costmeter.Meter, float64) { return lifecycles(t, n, 0) }, n},
		{"messages", func() (*costmeter.Meter, float64) { return messages(t, m) }, m},
		{"messages-recovery", func() (*costmeter.Meter, float64) { return recovering(t, m, false) }, m},
		{"messages-replayed", func() (*costmeter.Meter, float64) { return recovering(t, m, true) }, m / 10 * 10},
	} {
		meter, floor := sc.run()
		meters = append(meters, meter)
		bill := meter.Bill(costmeter.Prices)
		results = append(results, result{name: sc.name, per: float64(sc.per), bill: bill, floor: floor * 1e6,
			cost: costmeter.Total(bill) / float64(sc.per) * 1e6, sparse: costmeter.Total(meter.SparseBill(costmeter.Prices)) / float64(sc.per) * 1e6})
	}
	var metrics []string
	for _, mt := range meters {
		metrics = append(metrics, mt.CustomMetrics()...)
	}
	fixed, online, fixedLines := reconciliation(t, metrics)
	var out strings.Builder
	for _, res := range results {
		fmt.Fprintf(&out, "\n%s, per million (%d driven):\n", res.name, int(res.per))
		for _, l := range res.bill {
			fmt.Fprintf(&out, "  %-72s %12.3f %-11s $%8.3f\n", l.Item, l.Quantity/res.per, l.Unit, l.USD/res.per*1e6)
		}
	}
	fmt.Fprintf(&out, "\nfixed, per month (whatever the traffic):\n")
	for _, l := range fixedLines {
		fmt.Fprintf(&out, "  %-72s %12.0f %-11s $%8.2f\n", l.Item, l.Quantity, l.Unit, l.USD)
	}
	fmt.Fprintf(&out, "\nLambda at arm64 prices; durations measured in process on this machine (median billed, the spread above).\n")
	for _, res := range results {
		fmt.Fprintf(&out, "cost %s %.2f floor %.2f\n", res.name, res.cost, res.floor)
	}
	for _, res := range results {
		fmt.Fprintf(&out, "cost %s-sparse %.2f\n", res.name, res.sparse)
	}
	fmt.Fprintf(&out, "cost fixed-monthly %.2f\n", fixed)
	fmt.Fprintf(&out, "cost reconcile-per-million-online-month %.2f\n", online)
	fmt.Print(out.String())
	if raceDetector {
		t.Log("thresholds not checked: the race detector's instrumentation inflates the measured durations (CI checks them in a run without it)")
		return
	}
	for _, res := range results {
		if max, ok := limit[res.name]; !ok || res.cost > max {
			t.Errorf("cost %s %.2f per million is past its threshold %.2f (thresholds.json)", res.name, res.cost, max)
		}
	}
}
