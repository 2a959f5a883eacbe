package connection_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"sync"
	"testing"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/lambda/connection"
	"github.com/wspresence/wspresence/internal/lambdatest"
	"github.com/wspresence/wspresence/internal/presence"
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

// memView is a hand-written view: the core's fold over in-memory states.
type memView struct {
	states map[string]presence.State
	fail   error
}

func newView() *memView { return &memView{states: map[string]presence.State{}} }

func (m *memView) Apply(_ context.Context, e events.ConnectionEvent) (presence.Effects, error) {
	if m.fail != nil {
		return presence.Effects{}, m.fail
	}
	s, ok := m.states[e.UserID]
	if !ok {
		s = presence.NewState(e.UserID)
	}
	s, eff := s.Apply(e, 5*time.Second)
	m.states[e.UserID] = s
	return eff, nil
}

func (m *memView) Touch(context.Context, string, time.Time) (bool, error) { return true, nil }

func (m *memView) Admit(_ context.Context, e events.ConnectionEvent, max int) (presence.Effects, error) {
	if m.fail != nil {
		return presence.Effects{}, m.fail
	}
	s, ok := m.states[e.UserID]
	if !ok {
		s = presence.NewState(e.UserID)
	}
	s, eff, err := s.Admit(e, max, e.At.Add(-15*time.Minute), 5*time.Second)
	if err != nil {
		return eff, err
	}
	m.states[e.UserID] = s
	return eff, nil
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func load(t *testing.T, name string) lambdaevents.APIGatewayWebsocketProxyRequest {
	var req lambdaevents.APIGatewayWebsocketProxyRequest
	lambdatest.Load(t, name, nil, &req)
	return req
}

func TestConnectAndDisconnect(t *testing.T) {
	log := &memLog{byKey: map[string]events.ConnectionEvent{}}
	view := newView()
	h := &connection.Handler{Log: log, Owners: log, View: view, Logger: quiet()}
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
	// Read-your-connect: the open is folded before $connect answers.
	if live := view.states["1234"].Live(); len(live) != 1 || live[0] != "PXEyXdxwoAMCJzw=" {
		t.Fatalf("live after $connect: %v", live)
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
	h := &connection.Handler{Log: log, Owners: log, View: newView(), Logger: quiet()}
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
	h := &connection.Handler{Log: log, Owners: log, View: newView(), Logger: quiet()}
	view := newView()
	h.View = view
	if _, err := h.Connect(context.Background(), load(t, "websocket-connect.json")); err == nil {
		t.Fatal("a failed append must fail $connect so API Gateway refuses the connection")
	}
	// The open was folded first: its close is folded too, so nobody stays online.
	if live := view.states["1234"].Live(); len(live) != 0 {
		t.Fatalf("a connection refused for a failed append is live in the view: %v", live)
	}
	// A fold that fails refuses the connection with nothing appended.
	good := &memLog{byKey: map[string]events.ConnectionEvent{}}
	broken := newView()
	broken.fail = errors.New("throttled")
	if _, err := (&connection.Handler{Log: good, Owners: good, View: broken, Logger: quiet()}).Connect(context.Background(), load(t, "websocket-connect.json")); err == nil {
		t.Fatal("a failed fold must fail $connect")
	}
	if len(good.byKey) != 0 {
		t.Fatalf("a connection whose fold failed was appended: %+v", good.byKey)
	}
	req := load(t, "websocket-connect.json")
	req.RequestContext.Authorizer = nil
	if resp, err := (&connection.Handler{Log: log, Owners: log, View: newView(), Logger: quiet()}).Connect(context.Background(), req); err != nil || resp.StatusCode != 403 {
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

// The per-user cap refuses a connection past the limit with a 429, before anything is
// appended, as the local runtime does.
func TestConnectionCap(t *testing.T) {
	log := &memLog{byKey: map[string]events.ConnectionEvent{}}
	h := &connection.Handler{Log: log, Owners: log, View: newView(), MaxConnectionsPerUser: 2, Logger: quiet()}
	ctx := context.Background()
	for i, want := range []int{200, 200, 429, 429} {
		req := load(t, "websocket-connect.json")
		req.RequestContext.ConnectionID = fmt.Sprintf("conn-%d=", i)
		resp, err := h.Connect(ctx, req)
		if err != nil || resp.StatusCode != want {
			t.Fatalf("connection %d: %+v %v, want %d", i, resp, err, want)
		}
	}
	if len(log.byKey) != 2 {
		t.Fatalf("appended %d events, want only the 2 accepted opens", len(log.byKey))
	}
	// A retried $connect of an accepted connection is not refused by its own count.
	req := load(t, "websocket-connect.json")
	req.RequestContext.ConnectionID = "conn-1="
	if resp, _ := h.Connect(ctx, req); resp.StatusCode != 200 {
		t.Fatalf("retry of an accepted connection: %d", resp.StatusCode)
	}
}

// TestAgainstDynamoDB runs the handlers on the real adapter (dynalite): $connect folds its
// open into the view before it answers, with no projector running.
func TestAgainstDynamoDB(t *testing.T) {
	db := dynamotest.Client(t)
	st := dynamo.New(db, dynamotest.NewTables(t, db))
	h := &connection.Handler{Log: st, Owners: st, View: st, MaxConnectionsPerUser: 10, Logger: quiet()}
	ctx := context.Background()
	if _, err := h.Connect(ctx, load(t, "websocket-connect.json")); err != nil {
		t.Fatal(err)
	}
	if live, err := st.LiveConnections(ctx, "1234"); err != nil || len(live) != 1 || live[0] != "PXEyXdxwoAMCJzw=" {
		t.Fatalf("live right after $connect: %v, %v", live, err)
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

// TestDefaultRouteRecordsActivityOncePerWindow: frames on $default record the user's
// activity in the register beside the user item, once per window: the user's last
// activity moves, the log and the user item do not.
func TestDefaultRouteRecordsActivityOncePerWindow(t *testing.T) {
	db := dynamotest.Client(t)
	tables := dynamotest.NewTables(t, db)
	st := dynamo.New(db, tables)
	h := &connection.Handler{Log: st, Owners: st, View: st, Logger: quiet()}
	ctx := context.Background()
	req := load(t, "websocket-connect.json")
	if _, err := h.ConnectOrMessage(ctx, req); err != nil {
		t.Fatal(err)
	}
	before, err := st.State(ctx, "1234")
	if err != nil {
		t.Fatal(err)
	}
	req.RequestContext.RouteKey = "$default"
	req.RequestContext.EventType = "MESSAGE"
	start := req.RequestContext.RequestTimeEpoch
	lastActivity := func() time.Time {
		u, err := st.Users(ctx, []string{"1234"})
		if err != nil {
			t.Fatal(err)
		}
		return u[0].LastActivity
	}
	for i, at := range []int64{10_000, 70_000, 250_000} { // three frames within one window
		req.RequestContext.RequestTimeEpoch = start + at
		if resp, err := h.ConnectOrMessage(ctx, req); err != nil || resp.StatusCode != 200 {
			t.Fatalf("frame %d: %+v %v", i, resp, err)
		}
	}
	if got, want := lastActivity(), time.UnixMilli(start+10_000).UTC(); !got.Equal(want) {
		t.Fatalf("last activity %v, want the window's first frame %v", got, want)
	}
	req.RequestContext.RequestTimeEpoch = start + 10_000 + dynamo.ActivityWindow.Milliseconds()
	if _, err := h.ConnectOrMessage(ctx, req); err != nil {
		t.Fatal(err)
	}
	if got, want := lastActivity(), time.UnixMilli(req.RequestContext.RequestTimeEpoch).UTC(); !got.Equal(want) {
		t.Fatalf("last activity %v, want the next window's frame %v", got, want)
	}
	after, err := st.State(ctx, "1234")
	if err != nil || !reflect.DeepEqual(before, after) {
		t.Fatalf("activity changed the user item: %+v -> %+v (%v)", before, after, err)
	}
	for _, rec := range dynamotest.NewStream(db, tables.Events).Next(t) {
		if rec.Change.NewImage["type"].String() == string(events.TypeActivityRecorded) {
			t.Fatal("activity was appended to the log")
		}
	}
}

// TestSimultaneousConnectsAtTheCap: ten $connects of a user at the cap minus one, at
// once, on the real adapter: the cap is decided in the versioned fold, so exactly one is
// accepted and nine get 429, and the view and the log hold exactly the cap. A connection
// unseen past StaleAfter (its liveness unknown) does not count against the cap.
func TestSimultaneousConnectsAtTheCap(t *testing.T) {
	db := dynamotest.Client(t)
	st := dynamo.New(db, dynamotest.NewTables(t, db))
	const limit = 10
	h := &connection.Handler{Log: st, Owners: st, View: st, MaxConnectionsPerUser: limit, Logger: quiet()}
	ctx := context.Background()
	base := load(t, "websocket-connect.json")
	connect := func(id string, at int64) (int, error) {
		req := base
		req.RequestContext.ConnectionID = id
		req.RequestContext.RequestTimeEpoch = at
		resp, err := h.Connect(ctx, req)
		return resp.StatusCode, err
	}
	start := base.RequestContext.RequestTimeEpoch
	for i := range limit - 1 {
		if code, err := connect(fmt.Sprintf("held-%d=", i), start); err != nil || code != 200 {
			t.Fatalf("connection %d: %d %v", i, code, err)
		}
	}
	codes := make([]int, 10)
	var wg sync.WaitGroup
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, err := connect(fmt.Sprintf("race-%d=", i), start+1000)
			if err != nil {
				t.Errorf("connect %d: %v", i, err)
			}
			codes[i] = code
		}()
	}
	wg.Wait()
	accepted, refused := 0, 0
	for _, c := range codes {
		switch c {
		case 200:
			accepted++
		case 429:
			refused++
		}
	}
	if accepted != 1 || refused != 9 {
		t.Fatalf("answers %v: want exactly one 200 and nine 429", codes)
	}
	live, err := st.LiveConnections(ctx, "1234")
	if err != nil || len(live) != limit {
		t.Fatalf("%d live connections (%v), want %d", len(live), err, limit)
	}
	opens := 0
	for _, rec := range dynamotest.NewStream(db, st.Tables().Events).Next(t) {
		if rec.Change.NewImage["type"].String() == string(events.TypeConnectionOpened) {
			opens++
		}
	}
	if opens != limit {
		t.Fatalf("the log holds %d opens, want the %d admitted", opens, limit)
	}
	// Twenty minutes later, with no sign of life from the ten, their liveness is unknown:
	// a new connection is admitted.
	if code, err := connect("later=", start+int64(20*time.Minute/time.Millisecond)); err != nil || code != 200 {
		t.Fatalf("a connect past StaleAfter: %d %v", code, err)
	}
}
