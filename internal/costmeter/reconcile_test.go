package costmeter_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/apigatewaymanagementapi"
	"github.com/aws/aws-sdk-go-v2/service/dynamodbstreams"
	awseventbridge "github.com/aws/aws-sdk-go-v2/service/eventbridge"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/awsfake"
	"github.com/wspresence/wspresence/internal/bus/eventbridge"
	"github.com/wspresence/wspresence/internal/costmeter"
	"github.com/wspresence/wspresence/internal/gateway/apigw"
	"github.com/wspresence/wspresence/internal/grace/sqsdelay"
	"github.com/wspresence/wspresence/internal/lambda/sweeper"
	"github.com/wspresence/wspresence/internal/store/dynamo"
	"github.com/wspresence/wspresence/internal/stream/ddbstreams"
	"github.com/wspresence/wspresence/internal/stream/failures"
)

// Polling of an SQS event source mapping with nothing to read: Lambda starts with 5
// pollers, each a 20-second long poll.
const (
	idlePollers      = 5
	pollsPerMinute   = 3
	reconcileOnline  = 1000
	runsPerHour      = 12 // the reconciler's schedule, every 5 minutes
	passesPerHourMax = 6  // sweeper.DefaultPassEvery: a pass every 10 minutes at most
)

// reconciliation runs the reconciler as the schedule does, against dynalite and fakes of
// API Gateway, the queues and EventBridge, and returns the fixed monthly bill (its runs
// with nobody online and the relay's acknowledgement of their probes, the template's
// alarms, the custom metrics ingested, the idle polls of the queue mappings) with its
// lines, and the monthly cost of checking every connection of a million online users (a
// connection each) every 10 minutes.
func reconciliation(t *testing.T, metrics []string) (fixed, perMillionOnline float64, lines []costmeter.Line) {
	r := newRig(t)
	ctx := context.Background()
	gw := awsfake.New(t, func(req awsfake.Request) awsfake.Response {
		r.meter.Add("apigw-management-calls", 1)
		return awsfake.JSON(http.StatusOK, map[string]any{"connectedAt": "2026-11-30T12:00:00Z"})
	})
	gateway := apigw.New(apigatewaymanagementapi.NewFromConfig(gw.Config(), func(o *apigatewaymanagementapi.Options) {
		o.BaseEndpoint = aws.String(gw.URL + "/production")
	}))
	empty := awsfake.New(t, func(req awsfake.Request) awsfake.Response {
		r.meter.Add("sqs", 1)
		return awsfake.JSON(http.StatusOK, map[string]any{"Messages": []any{}})
	})
	bus := awsfake.New(t, func(req awsfake.Request) awsfake.Response {
		var in struct{ Entries []any }
		_ = json.Unmarshal(req.Body, &in)
		r.meter.Add("eventbridge", float64(len(in.Entries)))
		return awsfake.JSON(http.StatusOK, map[string]any{"FailedEntryCount": 0, "Entries": make([]map[string]string, len(in.Entries))})
	})
	streams := awsfake.New(t, func(req awsfake.Request) awsfake.Response {
		return awsfake.Error(http.StatusBadRequest, "UnknownOperation", req.Target)
	})
	clock := t0
	h := &sweeper.Handler{View: r.store, Log: r.store, Gateway: gateway,
		Publisher:  eventbridge.New(awseventbridge.NewFromConfig(bus.Config()), "bus"),
		DeadTimers: sqsdelay.NewDeadLetters(sqs.NewFromConfig(empty.Config()), "https://sqs.us-east-1.amazonaws.com/1/grace-dlq"),
		Failures:   failures.New(sqs.NewFromConfig(empty.Config()), "https://sqs.us-east-1.amazonaws.com/1/stream-failures"),
		Streams:    ddbstreams.New(dynamodbstreams.NewFromConfig(streams.Config())), ViewStream: "arn:aws:dynamodb:us-east-1:1:table/view/stream/x",
		Grace: r.store.Grace, GraceMargin: dynamo.DefaultGraceMargin, StaleAfter: dynamo.DefaultStaleAfter, OutboxAge: dynamo.DefaultOutboxAge,
		Retention: dynamo.DefaultTombstoneRetention, Limit: 1000, Now: func() time.Time { return clock },
		Logger: r.logger("sweeper"), Metrics: r.metrics("sweeper")}
	run := func() sweeper.Result {
		var res sweeper.Result
		r.meter.Invoke("sweeper", func() {
			var err error
			if res, err = h.Handle(ctx, nil); err != nil {
				t.Fatalf("reconciler: %+v %v", res, err)
			}
		})
		r.streams() // the relay acknowledges the probe
		return res
	}
	run()
	r.meter.Reset()
	clock = clock.Add(5 * time.Minute)
	run()
	perRun := costmeter.Total(r.meter.Bill(costmeter.Prices))
	metrics = append(metrics, r.meter.CustomMetrics()...)

	users := make([]string, reconcileOnline)
	for i := range users {
		users[i] = fmt.Sprintf("online-%d", i)
	}
	each(users, func(i int, u string) {
		if _, err := r.store.Admit(ctx, events.Opened(u, fmt.Sprintf("on-%d=", i), clock, "", ""), 10); err != nil {
			t.Error(err)
		}
	})
	r.streams()
	r.meter.Reset()
	clock = clock.Add(sweeper.DefaultPassEvery)
	if res := run(); res.Checked != reconcileOnline || res.Passes != 1 {
		t.Fatalf("the pass over %d online users: %+v", reconcileOnline, res)
	}
	pass := costmeter.Total(r.meter.Bill(costmeter.Prices)) - perRun
	perMillionOnline = pass * 1e6 / reconcileOnline * passesPerHourMax * costmeter.HoursPerMonth

	tpl := template(t)
	alarms, mappings := 0, 0
	for _, res := range tpl.Resources() {
		if res["Type"] == "AWS::CloudWatch::Alarm" {
			alarms++
		}
		if ev, ok := res["Properties"].(map[string]any)["Events"].(map[string]any); ok {
			for _, e := range ev {
				if e.(map[string]any)["Type"] == "SQS" {
					mappings++
				}
			}
		}
	}
	slices.Sort(metrics)
	metrics = slices.Compact(metrics)
	runs := float64(runsPerHour * costmeter.HoursPerMonth)
	polls := float64(mappings*idlePollers*pollsPerMinute*60) * costmeter.HoursPerMonth
	p := costmeter.Prices
	lines = []costmeter.Line{
		{Item: "reconciler runs with nobody online, and the relay's acknowledgements", Quantity: runs, Unit: "runs", USD: runs * perRun},
		{Item: "cloudwatch alarms (the template's)", Quantity: float64(alarms), Unit: "alarms", USD: float64(alarms) * p.AlarmMonth},
		{Item: "cloudwatch custom metrics ingested", Quantity: float64(len(metrics)), Unit: "metrics", USD: float64(len(metrics)) * p.MetricMonth},
		{Item: fmt.Sprintf("sqs polls of the idle queue mappings (%d x %d pollers)", mappings, idlePollers), Quantity: polls, Unit: "requests", USD: polls * p.SQSRequest},
	}
	return costmeter.Total(lines), perMillionOnline, lines
}
