// Package services_test runs the Lambda functions' real binaries under the Lambda runtime
// interface emulator (aws-lambda-rie, from WSPRESENCE_LAMBDA_RIE), each talking to dynalite
// and to wire-level fakes of the other AWS services, and asserts their answers.
package services_test

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/auth"
	"github.com/wspresence/wspresence/internal/awsfake"
	"github.com/wspresence/wspresence/internal/lambdatest"
	"github.com/wspresence/wspresence/internal/schematest"
	"github.com/wspresence/wspresence/internal/store/dynamo"
	"github.com/wspresence/wspresence/internal/store/dynamo/dynamotest"
)

// RIEEnv names the variable holding the path of aws-lambda-rie.
const RIEEnv = "WSPRESENCE_LAMBDA_RIE"

var buildMu sync.Mutex

// build compiles services/<name> as a Lambda bootstrap for this machine's architecture.
func build(t *testing.T, name string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	dir := filepath.Join(t.TempDir(), name)
	out := filepath.Join(dir, "bootstrap")
	cmd := exec.Command("go", "build", "-tags", "lambda.norpc", "-trimpath", "-o", out, "./services/"+name)
	cmd.Dir = lambdatest.Root(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, b)
	}
	return out
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// function is one binary running under the emulator.
type function struct {
	url  string
	logs *syncBuffer
}

// syncBuffer collects a process's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func start(t *testing.T, name string, env map[string]string) *function {
	t.Helper()
	rie := os.Getenv(RIEEnv)
	if rie == "" {
		t.Skipf("%s is not set: go install the Lambda runtime interface emulator (see .ci/run)", RIEEnv)
	}
	bootstrap := build(t, name)
	runtimeAPI, invoke := freePort(t), freePort(t)
	cmd := exec.Command(rie, "--runtime-api-address", runtimeAPI, "--runtime-interface-emulator-address", invoke, bootstrap)
	cmd.Dir = filepath.Dir(bootstrap)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "AWS_REGION=us-east-1", "AWS_ACCESS_KEY_ID=AKIDTEST",
		"AWS_SECRET_ACCESS_KEY=secret", "AWS_LAMBDA_LOG_FORMAT=JSON", "AWS_EC2_METADATA_DISABLED=true"}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	f := &function{url: "http://" + invoke + "/2015-03-31/functions/function/invocations", logs: &syncBuffer{}}
	cmd.Stdout, cmd.Stderr = f.logs, f.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("%s logs:\n%s", name, f.logs.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", invoke)
		if err == nil {
			c.Close()
			return f
		}
		if time.Now().After(deadline) {
			t.Fatalf("the emulator did not listen on %s", invoke)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (f *function) invoke(t *testing.T, payload []byte) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, f.url, bytes.NewReader(payload))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return body
}

func TestAuthorizerUnderTheEmulator(t *testing.T) {
	secret := "emulated-secret-0123456789abcdef"
	ssmFake := awsfake.New(t, func(r awsfake.Request) awsfake.Response {
		return awsfake.JSON(http.StatusOK, map[string]any{"Parameter": map[string]any{"Name": "/WebSocketAdapter/JwtSecret", "Type": "SecureString", "Value": secret}})
	})
	f := start(t, "authorizer", map[string]string{"AWS_ENDPOINT_URL_SSM": ssmFake.URL})
	tok, _ := auth.Mint([]byte(secret), "1234", time.Hour, time.Now())
	var allow lambdaevents.APIGatewayCustomAuthorizerResponse
	body := f.invoke(t, lambdatest.Raw(t, "authorizer-request.json", map[string]string{"TOKEN": tok}))
	if err := json.Unmarshal(body, &allow); err != nil || allow.PrincipalID != "1234" || allow.Context["userId"] != "1234" ||
		allow.PolicyDocument.Statement[0].Effect != "Allow" ||
		allow.PolicyDocument.Statement[0].Resource[0] != "arn:aws:execute-api:us-east-1:123456789012:abcdef1234/production/$connect" {
		t.Fatalf("answer %s (%v)", body, err)
	}
	var refused struct{ ErrorMessage string }
	body = f.invoke(t, lambdatest.Raw(t, "authorizer-request.json", map[string]string{"TOKEN": "not-a-token"}))
	if err := json.Unmarshal(body, &refused); err != nil || refused.ErrorMessage != "Unauthorized" {
		t.Fatalf("bad token answered %s", body)
	}
	var in struct {
		Name           string
		WithDecryption bool
	}
	ssmFake.Requests()[0].Decode(t, &in)
	if in.Name != "/WebSocketAdapter/JwtSecret" || !in.WithDecryption || len(ssmFake.Requests()) != 1 {
		t.Fatalf("SSM calls %d, first %+v", len(ssmFake.Requests()), in)
	}
	if strings.Contains(f.logs.String(), tok) || strings.Contains(f.logs.String(), secret) {
		t.Fatal("a token or the secret reached the logs")
	}
}

func TestRestAuthorizerUnderTheEmulator(t *testing.T) {
	key := "emulated-api-key-0123456789"
	ssmFake := awsfake.New(t, func(r awsfake.Request) awsfake.Response {
		return awsfake.JSON(http.StatusOK, map[string]any{"Parameter": map[string]any{"Name": "/wspresence/RestApiKey", "Type": "SecureString", "Value": key}})
	})
	f := start(t, "restauthorizer", map[string]string{"AWS_ENDPOINT_URL_SSM": ssmFake.URL,
		"API_KEY_PARAMETER": "/wspresence/RestApiKey", "API_KEY_TTL": "5m"})
	for try, want := range map[string]bool{key: true, "wrong-key-0123456789": false, "": false} {
		var resp lambdaevents.APIGatewayV2CustomAuthorizerSimpleResponse
		body := f.invoke(t, lambdatest.Raw(t, "http-api-v2-authorizer.json", map[string]string{"KEY": try}))
		if err := json.Unmarshal(body, &resp); err != nil || resp.IsAuthorized != want {
			t.Fatalf("key %q answered %s, want isAuthorized %v", try, body, want)
		}
	}
	var in struct {
		Name           string
		WithDecryption bool
	}
	ssmFake.Requests()[0].Decode(t, &in)
	if in.Name != "/wspresence/RestApiKey" || !in.WithDecryption {
		t.Fatalf("SSM call %+v", in)
	}
	if strings.Contains(f.logs.String(), key) {
		t.Fatal("the key reached the logs")
	}
}

func seed(t *testing.T) (dynamo.Tables, *dynamo.Store) {
	db := dynamotest.Client(t)
	tables := dynamotest.NewTables(t, db)
	st := dynamo.New(db, tables)
	at := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	for _, e := range []events.ConnectionEvent{events.Opened("1234", "live-1=", at, "", ""), events.Opened("1234", "gone-1=", at, "", "")} {
		if _, err := st.Apply(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	return tables, st
}

func TestOnlineUnderTheEmulator(t *testing.T) {
	tables, _ := seed(t)
	f := start(t, "online", map[string]string{"AWS_ENDPOINT_URL_DYNAMODB": dynamotest.Endpoint(t), "VIEW_TABLE": tables.View})
	var resp lambdaevents.APIGatewayV2HTTPResponse
	body := f.invoke(t, lambdatest.Raw(t, "http-api-v2-online.json", nil))
	if err := json.Unmarshal(body, &resp); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("answer %s (%v)", body, err)
	}
	schematest.DecodeOriginalList(t, []byte(resp.Body))
	var got []map[string]any
	_ = json.Unmarshal([]byte(resp.Body), &got)
	if len(got) != 2 || got[0]["UserId"] != "1234" || got[0]["Connections"] != float64(2) || got[1]["IsOnline"] != false {
		t.Fatalf("body %s", resp.Body)
	}
}

func TestSenderUnderTheEmulator(t *testing.T) {
	tables, _ := seed(t)
	gw := awsfake.New(t, func(r awsfake.Request) awsfake.Response {
		if strings.HasSuffix(r.Path, "/gone-1=") {
			return awsfake.Error(http.StatusGone, "GoneException", "")
		}
		return awsfake.Response{Status: http.StatusOK}
	})
	bus := awsfake.New(t, func(r awsfake.Request) awsfake.Response {
		var in struct{ Entries []any }
		_ = json.Unmarshal(r.Body, &in)
		res := make([]map[string]string, len(in.Entries))
		for i := range res {
			res[i] = map[string]string{"EventId": fmt.Sprint(i)}
		}
		return awsfake.JSON(http.StatusOK, map[string]any{"FailedEntryCount": 0, "Entries": res})
	})
	f := start(t, "sender", map[string]string{"AWS_ENDPOINT_URL_DYNAMODB": dynamotest.Endpoint(t),
		"AWS_ENDPOINT_URL_EVENTBRIDGE": bus.URL, "EVENTS_TABLE": tables.Events, "VIEW_TABLE": tables.View,
		"EVENT_BUS_NAME": "wspresence", "WEBSOCKET_ENDPOINT": gw.URL + "/production",
		"HELD_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/held", "HELD_QUEUE_ARN": "arn:aws:sqs:us-east-1:123456789012:held"})
	var sqs lambdaevents.SQSEvent
	lambdatest.Load(t, "sqs-event.json", nil, &sqs)
	var resp lambdaevents.SQSEventResponse
	body := f.invoke(t, lambdatest.Raw(t, "sqs-event.json", nil))
	if err := json.Unmarshal(body, &resp); err != nil || len(resp.BatchItemFailures) != 1 || resp.BatchItemFailures[0].ItemIdentifier != sqs.Records[2].MessageId {
		t.Fatalf("answer %s (%v)", body, err)
	}
	posts := map[string]string{}
	for _, r := range gw.Requests() {
		posts[r.Path] = string(r.Body)
	}
	if posts["/production/@connections/live-1="] != "hello from the queue" || len(posts) != 2 {
		t.Fatalf("posts %v", posts)
	}
	var types []string
	for _, r := range bus.Requests() {
		var in struct {
			Entries []struct{ DetailType, EventBusName string }
		}
		r.Decode(t, &in)
		for _, e := range in.Entries {
			types = append(types, e.DetailType+"@"+e.EventBusName)
		}
	}
	if strings.Join(types, ",") != "MessageDelivered@wspresence,MessageUndeliverable@wspresence" &&
		strings.Join(types, ",") != "MessageUndeliverable@wspresence,MessageDelivered@wspresence" {
		t.Fatalf("published %v", types)
	}
}

// TestPresencePathUnderTheEmulator runs the rest of the functions, each once, as their
// bootstraps under the Lambda runtime interface emulator, along one user's presence path:
// $connect (append and fold), the projector (the event table's stream), $disconnect, the
// projector again (which sends the grace timer to its queue), the outbox relay (the view
// table's stream, to EventBridge), the grace function (fed the timer's message as the
// queue's mapping delivers it), the relay again (UserOffline) and the reconciler.
func TestPresencePathUnderTheEmulator(t *testing.T) {
	db := dynamotest.Client(t)
	tables := dynamotest.NewTables(t, db)
	st := dynamo.New(db, tables)
	ctx := context.Background()
	ddb := dynamotest.Endpoint(t)
	var mu sync.Mutex
	var starts []map[string]any
	var timerBodies []string
	timers := awsfake.New(t, func(r awsfake.Request) awsfake.Response {
		if r.Target == "AmazonSQS.ReceiveMessage" { // the grace dead-letter queue is empty
			return awsfake.JSON(http.StatusOK, map[string]any{"Messages": []any{}})
		}
		var in struct {
			MessageBody  string
			DelaySeconds int
		}
		_ = json.Unmarshal(r.Body, &in)
		var input map[string]any
		_ = json.Unmarshal([]byte(in.MessageBody), &input)
		mu.Lock()
		starts = append(starts, input)
		timerBodies = append(timerBodies, in.MessageBody)
		mu.Unlock()
		sum := md5.Sum([]byte(in.MessageBody))
		return awsfake.JSON(http.StatusOK, map[string]any{"MessageId": "timer-1", "MD5OfMessageBody": hex.EncodeToString(sum[:])})
	})
	var published []string
	bus := awsfake.New(t, func(r awsfake.Request) awsfake.Response {
		var in struct {
			Entries []struct{ DetailType, Detail string }
		}
		_ = json.Unmarshal(r.Body, &in)
		res := make([]map[string]string, len(in.Entries))
		mu.Lock()
		for i, e := range in.Entries {
			published = append(published, e.DetailType)
			res[i] = map[string]string{"EventId": fmt.Sprint(i)}
		}
		mu.Unlock()
		return awsfake.JSON(http.StatusOK, map[string]any{"FailedEntryCount": 0, "Entries": res})
	})
	gw := awsfake.New(t, func(awsfake.Request) awsfake.Response { return awsfake.Error(http.StatusGone, "GoneException", "") })
	tablesEnv := map[string]string{"AWS_ENDPOINT_URL_DYNAMODB": ddb, "EVENTS_TABLE": tables.Events, "VIEW_TABLE": tables.View, "OFFLINE_GRACE_SECONDS": "5"}
	with := func(extra map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range tablesEnv {
			out[k] = v
		}
		for k, v := range extra {
			out[k] = v
		}
		return out
	}
	connect := start(t, "connect", with(map[string]string{"MAX_CONNECTIONS_PER_USER": "10",
		"WEBSOCKET_ENDPOINT": gw.URL + "/production", "AWS_ENDPOINT_URL_EVENTBRIDGE": bus.URL, "EVENT_BUS_NAME": "wspresence"}))
	disconnect := start(t, "disconnect", map[string]string{"AWS_ENDPOINT_URL_DYNAMODB": ddb, "EVENTS_TABLE": tables.Events, "VIEW_TABLE": tables.View})
	projector := start(t, "projector", with(map[string]string{"AWS_ENDPOINT_URL_SQS": timers.URL,
		"GRACE_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/grace"}))
	relay := start(t, "publisher", map[string]string{"AWS_ENDPOINT_URL_EVENTBRIDGE": bus.URL, "EVENT_BUS_NAME": "wspresence",
		"AWS_ENDPOINT_URL_DYNAMODB": ddb, "VIEW_TABLE": tables.View, "OFFLINE_GRACE_SECONDS": "5"})
	graceFn := start(t, "grace", map[string]string{"AWS_ENDPOINT_URL_DYNAMODB": ddb, "VIEW_TABLE": tables.View, "OFFLINE_GRACE_SECONDS": "5",
		"AWS_ENDPOINT_URL_SQS": timers.URL, "GRACE_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/grace"})
	sweeper := start(t, "sweeper", with(map[string]string{"WEBSOCKET_ENDPOINT": gw.URL + "/production",
		"AWS_ENDPOINT_URL_EVENTBRIDGE": bus.URL, "EVENT_BUS_NAME": "wspresence", "RECONCILE_LIMIT": "100",
		"AWS_ENDPOINT_URL_SQS": timers.URL, "GRACE_DLQ_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/grace-dlq",
		"STREAM_FAILURE_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/stream-failures",
		"VIEW_STREAM_ARN":          "arn:aws:dynamodb:us-east-1:123456789012:table/view/stream/2026-01-01T00:00:00.000"}))

	ok := func(name string, body []byte) {
		t.Helper()
		var resp struct {
			StatusCode   int
			ErrorMessage string `json:"errorMessage"`
		}
		if err := json.Unmarshal(body, &resp); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%s answered %s", name, body)
		}
	}
	relayUser := func() {
		t.Helper()
		out, err := db.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(tables.View),
			Key: map[string]types.AttributeValue{"pk": &types.AttributeValueMemberS{Value: "1234"}, "sk": &types.AttributeValueMemberS{Value: "#USER"}}})
		if err != nil {
			t.Fatal(err)
		}
		rec := dynamotest.Record(out.Item, 1)
		rec.EventName, rec.Change.NewImage = "MODIFY", dynamotest.Image(out.Item)
		payload, _ := json.Marshal(lambdaevents.DynamoDBEvent{Records: []lambdaevents.DynamoDBEventRecord{rec}})
		var resp lambdaevents.DynamoDBEventResponse
		if body := relay.invoke(t, payload); json.Unmarshal(body, &resp) != nil || len(resp.BatchItemFailures) > 0 {
			t.Fatalf("relay answered %s", body)
		}
	}
	ok("connect", connect.invoke(t, lambdatest.Raw(t, "websocket-connect.json", nil)))
	if live, err := st.LiveConnections(ctx, "1234"); err != nil || len(live) != 1 {
		t.Fatalf("live after $connect (no projector yet): %v %v", live, err)
	}
	stream := dynamotest.NewStream(db, tables.Events)
	project := func() {
		t.Helper()
		payload, _ := json.Marshal(lambdaevents.DynamoDBEvent{Records: stream.Next(t)})
		var resp lambdaevents.DynamoDBEventResponse
		if body := projector.invoke(t, payload); json.Unmarshal(body, &resp) != nil || len(resp.BatchItemFailures) > 0 {
			t.Fatalf("projector answered %s", body)
		}
	}
	relayUser() // $connect's write: UserOnline
	project()   // the open again: already folded, nothing changes
	ok("disconnect", disconnect.invoke(t, lambdatest.Raw(t, "websocket-disconnect.json", nil)))
	project() // the close: offline, grace started
	mu.Lock()
	if len(starts) != 1 || starts[0]["userId"] != "1234" || starts[0]["offlineSince"] != "1795687500456000000" {
		t.Fatalf("grace executions %v", starts)
	}
	graceEvent, _ := json.Marshal(lambdaevents.SQSEvent{Records: []lambdaevents.SQSMessage{{MessageId: "timer-1", Body: timerBodies[0],
		Attributes: map[string]string{"ApproximateReceiveCount": "1"}}}})
	mu.Unlock()

	var res lambdaevents.SQSEventResponse
	if body := graceFn.invoke(t, graceEvent); json.Unmarshal(body, &res) != nil || len(res.BatchItemFailures) != 0 {
		t.Fatalf("grace answered %s", body)
	}
	relayUser() // the expiry's write: UserOffline
	var sweep struct{ Due, Failed int }
	if body := sweeper.invoke(t, lambdatest.Raw(t, "scheduled-event.json", nil)); json.Unmarshal(body, &sweep) != nil || sweep.Failed != 0 {
		t.Fatalf("reconciler answered %s", body)
	}
	s, err := st.State(ctx, "1234")
	if err != nil || s.User.Online() || s.User.Announced != "offline" {
		t.Fatalf("state at the end: %+v %v", s.User, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(published, ",") != "UserOnline,UserOffline" {
		t.Fatalf("published %v", published)
	}

	// A client that opts in to recovery gets the subprotocol back from the function, and
	// its recover route is served (the gateway here finds every connection gone).
	var framed lambdaevents.APIGatewayWebsocketProxyRequest
	lambdatest.Load(t, "websocket-connect.json", nil, &framed)
	framed.RequestContext.ConnectionID = "framed="
	framed.Headers["Sec-WebSocket-Protocol"] = "wspresence.v1"
	payload, _ := json.Marshal(framed)
	var answer lambdaevents.APIGatewayProxyResponse
	if body := connect.invoke(t, payload); json.Unmarshal(body, &answer) != nil || answer.StatusCode != http.StatusOK ||
		answer.Headers["Sec-WebSocket-Protocol"] != "wspresence.v1" {
		t.Fatalf("$connect with the subprotocol answered %s", body)
	}
	var rec lambdaevents.APIGatewayWebsocketProxyRequest
	lambdatest.Load(t, "websocket-recover.json", map[string]string{"epoch": "e", "offset": "0"}, &rec)
	rec.RequestContext.ConnectionID = "framed="
	payload, _ = json.Marshal(rec)
	ok("recover", connect.invoke(t, payload))
	if head, found, err := st.StreamHead(ctx, "1234"); err != nil || !found || head.Epoch == "" || head.Framed["framed="].IsZero() {
		t.Fatalf("stream after the opt-in: %+v %v %v", head, found, err)
	}
	// The recover's answer found the connection gone: it is closed.
	if live, err := st.LiveConnections(ctx, "1234"); err != nil || len(live) != 0 {
		t.Fatalf("live after the recover found the connection gone: %v %v", live, err)
	}
}
