package connection_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/lambda/connection"
	"github.com/wspresence/wspresence/internal/lambdatest"
	"github.com/wspresence/wspresence/internal/store/dynamo"
	"github.com/wspresence/wspresence/internal/store/dynamo/dynamotest"
)

// memLog is an in-memory log keyed like the real one.
type memLog struct {
	byKey map[string]events.ConnectionEvent
	fail  error
}

func (m *memLog) Append(_ context.Context, evs ...events.ConnectionEvent) (int, error) {
	if m.fail != nil {
		return 0, m.fail
	}
	n := 0
	for _, e := range evs {
		if _, ok := m.byKey[e.Key()]; !ok {
			m.byKey[e.Key()] = e
			n++
		}
	}
	return n, nil
}

func (m *memLog) OpenedBy(_ context.Context, id string) (string, error) {
	if e, ok := m.byKey[events.Opened("", id, time.Time{}, "", "").Key()]; ok {
		return e.UserID, nil
	}
	return "", dynamo.ErrUnknownConnection
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func load(t *testing.T, name string) lambdaevents.APIGatewayWebsocketProxyRequest {
	var req lambdaevents.APIGatewayWebsocketProxyRequest
	lambdatest.Load(t, name, nil, &req)
	return req
}

func TestConnectAndDisconnect(t *testing.T) {
	log := &memLog{byKey: map[string]events.ConnectionEvent{}}
	h := &connection.Handler{Log: log, Owners: log, Logger: quiet()}
	ctx := context.Background()
	for range 2 { // a retried invocation appends nothing twice
		resp, err := h.Connect(ctx, load(t, "websocket-connect.json"))
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("connect: %+v %v", resp, err)
		}
	}
	open := log.byKey["ConnectionOpened#PXEyXdxwoAMCJzw="]
	want := events.Opened("1234", "PXEyXdxwoAMCJzw=", time.UnixMilli(1795687200123), "203.0.113.10", "wscat/6.0")
	if open != want || len(log.byKey) != 1 {
		t.Fatalf("appended %+v, want %+v", log.byKey, want)
	}
	resp, err := h.Disconnect(ctx, load(t, "websocket-disconnect.json"))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("disconnect: %+v %v", resp, err)
	}
	closed := log.byKey["ConnectionClosed#PXEyXdxwoAMCJzw="]
	if closed.UserID != "1234" || closed.Reason != events.ReasonClient || !closed.At.Equal(time.UnixMilli(1795687500456)) {
		t.Fatalf("close %+v", closed)
	}
}

func TestDisconnectWithoutAuthorizerContextFindsTheUser(t *testing.T) {
	log := &memLog{byKey: map[string]events.ConnectionEvent{}}
	h := &connection.Handler{Log: log, Owners: log, Logger: quiet()}
	ctx := context.Background()
	if _, err := h.Connect(ctx, load(t, "websocket-connect.json")); err != nil {
		t.Fatal(err)
	}
	req := load(t, "websocket-disconnect.json")
	req.RequestContext.Authorizer = nil
	req.RequestContext.DisconnectStatusCode = 1006
	if _, err := h.Disconnect(ctx, req); err != nil {
		t.Fatal(err)
	}
	if c := log.byKey["ConnectionClosed#PXEyXdxwoAMCJzw="]; c.UserID != "1234" || c.Reason != events.ReasonExpired {
		t.Fatalf("close %+v", c)
	}
	req.RequestContext.ConnectionID = "never-seen="
	if _, err := h.Disconnect(ctx, req); !errors.Is(err, connection.ErrNoUser) {
		t.Fatalf("unknown connection: %v", err)
	}
}

func TestConnectErrors(t *testing.T) {
	log := &memLog{byKey: map[string]events.ConnectionEvent{}, fail: errors.New("throttled")}
	h := &connection.Handler{Log: log, Owners: log, Logger: quiet()}
	if _, err := h.Connect(context.Background(), load(t, "websocket-connect.json")); err == nil {
		t.Fatal("a failed append must fail $connect so API Gateway refuses the connection")
	}
	req := load(t, "websocket-connect.json")
	req.RequestContext.Authorizer = nil
	if resp, err := (&connection.Handler{Log: log, Owners: log, Logger: quiet()}).Connect(context.Background(), req); err != nil || resp.StatusCode != 403 {
		t.Fatalf("connect without a user: %+v %v", resp, err)
	}
}

func TestReasonFor(t *testing.T) {
	for code, want := range map[int64]events.CloseReason{1000: "client", 1001: "client", 1005: "client", 1006: "expired", 1011: "expired", 0: "expired"} {
		if got := connection.ReasonFor(code); got != want {
			t.Errorf("ReasonFor(%d) = %s, want %s", code, got, want)
		}
	}
}

// TestAgainstDynamoDB runs the handlers on the real adapter (dynalite).
func TestAgainstDynamoDB(t *testing.T) {
	db := dynamotest.Client(t)
	st := dynamo.New(db, dynamotest.NewTables(t, db))
	h := &connection.Handler{Log: st, Owners: st, Logger: quiet()}
	ctx := context.Background()
	if _, err := h.Connect(ctx, load(t, "websocket-connect.json")); err != nil {
		t.Fatal(err)
	}
	req := load(t, "websocket-disconnect.json")
	req.RequestContext.Authorizer = nil
	for range 2 {
		if _, err := h.Disconnect(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	if uid, err := st.OpenedBy(ctx, "PXEyXdxwoAMCJzw="); err != nil || uid != "1234" {
		t.Fatalf("OpenedBy = %q, %v", uid, err)
	}
}

func TestDefaultRouteRecordsActivityOncePerInterval(t *testing.T) {
	log := &memLog{byKey: map[string]events.ConnectionEvent{}}
	h := &connection.Handler{Log: log, Owners: log, Logger: quiet()}
	ctx := context.Background()
	req := load(t, "websocket-connect.json")
	if _, err := h.ConnectOrMessage(ctx, req); err != nil {
		t.Fatal(err)
	}
	req.RequestContext.RouteKey = "$default"
	req.RequestContext.EventType = "MESSAGE"
	for i := range 3 {
		req.RequestContext.RequestTimeEpoch = 1795687230000 + int64(i)*1000 // three frames within one interval
		if resp, err := h.ConnectOrMessage(ctx, req); err != nil || resp.StatusCode != 200 {
			t.Fatalf("frame %d: %+v %v", i, resp, err)
		}
	}
	req.RequestContext.RequestTimeEpoch = 1795687260000 // the next interval
	if _, err := h.ConnectOrMessage(ctx, req); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range log.byKey {
		if e.Type == events.TypeActivityRecorded {
			n++
		}
	}
	if n != 2 || len(log.byKey) != 3 {
		t.Fatalf("%d activities (of %d events), want 2", n, len(log.byKey))
	}
}
