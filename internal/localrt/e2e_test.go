package localrt_test

import (
	"context"
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
)

// TestEndToEnd drives the whole local runtime with real WebSocket clients: presence,
// delivery, published events, the grace period, and a restart on the same data dir.
func TestEndToEnd(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, dir, nil)
	sub := ts.subscribe("0")
	grace := ts.cfg.OfflineGrace

	// A opens two connections, B one: both listed with their connection counts.
	a1, a2 := ts.dial("A"), ts.dial("A")
	b1 := ts.dial("B")
	waitFor(t, "A and B online", func() bool {
		list, _ := ts.online("")
		a, okA := statusOf(list, "A")
		b, okB := statusOf(list, "B")
		return okA && okB && a.Connections == 2 && b.Connections == 1 && a.IsOnline && b.IsOnline
	})
	list, _ := ts.online("")
	if len(list) != 2 || list[0].LastActivity.IsZero() {
		t.Fatalf("online list %+v", list)
	}
	// The original's per-user route answers the same truth.
	if a, nobody := ts.userStatus("A"), ts.userStatus("nobody"); a != "online" || nobody != "offline" {
		t.Fatalf("GET /user/{userId}/online: A %s, nobody %s", a, nobody)
	}
	waitFor(t, "UserOnline for A and B", func() bool {
		return len(sub.of(events.DetailUserOnline, "A")) == 1 && len(sub.of(events.DetailUserOnline, "B")) == 1
	})

	// A message to A arrives on both of A's connections and is reported delivered.
	ids := ts.send(`{"UserId":"A","Body":"hello A"}`)
	a1.expectFrame(t, "hello A")
	a2.expectFrame(t, "hello A")
	waitFor(t, "MessageDelivered", func() bool {
		d := sub.of(events.DetailMessageDelivered, "A")
		return len(d) == 1 && d[0]["messageId"] == ids[0] && d[0]["connections"] == float64(2)
	})
	select {
	case f := <-b1.frames:
		t.Fatalf("B received A's message %q", f)
	default:
	}

	// A message to an offline user is undeliverable.
	ids = ts.send(`{"userId":"C","body":"anyone?"}`)
	waitFor(t, "MessageUndeliverable", func() bool {
		u := sub.of(events.DetailMessageUndeliverable, "C")
		return len(u) == 1 && u[0]["messageId"] == ids[0] && u[0]["reason"] == "offline"
	})

	// The metrics saw all of it.
	ts.do(http.MethodGet, "/user/online", "wrong-key-0123456789", nil)
	m := ts.metrics()
	for _, name := range []string{
		"wspresence_connections", "wspresence_online_users",
		`wspresence_events_appended_total{type="ConnectionOpened"}`,
		"wspresence_projector_lag_seconds_count",
		`wspresence_messages_total{outcome="delivered"}`, `wspresence_messages_total{outcome="undeliverable"}`,
		"wspresence_delivery_latency_seconds_count", `wspresence_auth_failures_total{reason="api_key"}`,
		"wspresence_store_commit_batch_size_count",
		"wspresence_store_commit_sync_seconds_count", "wspresence_store_commit_sync_seconds_sum",
		"go_sched_latencies_seconds_count",
	} {
		if v := m[name]; v <= 0 {
			t.Errorf("metric %s = %v, want > 0", name, v)
		}
	}
	if m["wspresence_connections"] != 3 || m["wspresence_online_users"] != 2 {
		t.Errorf("connections %v, online users %v; want 3 and 2", m["wspresence_connections"], m["wspresence_online_users"])
	}

	// Closing one of A's connections keeps A online.
	a1.close(t)
	waitFor(t, "A down to one connection", func() bool {
		s, _ := ts.online("userIds=A")
		return s[0].Connections == 1
	})
	time.Sleep(2 * grace)
	if s, _ := ts.online("userIds=A"); !s[0].IsOnline {
		t.Fatal("A went offline with a connection left")
	}
	if n := len(sub.of(events.DetailUserOffline, "A")); n != 0 {
		t.Fatalf("%d UserOffline for A while a connection is open", n)
	}

	// Closing the last one yields exactly one UserOffline, after the grace period.
	closedAt := time.Now()
	a2.close(t)
	waitFor(t, "A offline in the view", func() bool {
		s, _ := ts.online("userIds=A")
		return !s[0].IsOnline && s[0].Connections == 0 && !s[0].LastActivity.IsZero()
	})
	if st := ts.userStatus("A"); st != "offline" {
		t.Fatalf("GET /user/A/online: %s after A's last close", st)
	}
	waitFor(t, "UserOffline for A", func() bool { return len(sub.of(events.DetailUserOffline, "A")) == 1 })
	if elapsed := time.Since(closedAt); elapsed < grace {
		t.Fatalf("UserOffline after %s, before the %s grace period", elapsed, grace)
	}

	// B reconnects inside the grace period: no UserOffline, no second UserOnline.
	b1.close(t)
	waitFor(t, "B offline in the view", func() bool {
		s, _ := ts.online("userIds=B")
		return !s[0].IsOnline
	})
	b2 := ts.dial("B")
	waitFor(t, "B back", func() bool {
		s, _ := ts.online("userIds=B")
		return s[0].IsOnline
	})
	time.Sleep(3 * grace)
	if n, m := len(sub.of(events.DetailUserOffline, "B")), len(sub.of(events.DetailUserOnline, "B")); n != 0 || m != 1 {
		t.Fatalf("reconnect inside grace: %d UserOffline, %d UserOnline for B", n, m)
	}
	if n := len(sub.of(events.DetailUserOffline, "A")); n != 1 {
		t.Fatalf("%d UserOffline for A, want exactly 1", n)
	}

	// Nothing secret reached the logs of the whole run.
	logs := ts.logs.String()
	for name, secret := range map[string]string{"API key": testKey, "JWT secret": testSecret} {
		if strings.Contains(logs, secret) {
			t.Errorf("the %s appears in the logs", name)
		}
	}
	for _, tok := range ts.tokens {
		if strings.Contains(logs, tok) {
			t.Error("a user token appears in the logs")
		}
	}
	if !strings.Contains(logs, `"msg":"connected"`) {
		t.Fatal("the logs were not captured")
	}

	// Stop and restart on the same data dir: the view is unchanged.
	b2.close(t)
	waitFor(t, "UserOffline for B", func() bool { return len(sub.of(events.DetailUserOffline, "B")) == 1 })
	ctx := context.Background()
	before, err := ts.srv.Store().Dump(ctx)
	if err != nil {
		t.Fatal(err)
	}
	restBefore, _ := ts.online("userIds=A,B,C")
	sub.close()
	ts.stop()

	ts2 := startServer(t, dir, nil)
	after, err := ts2.srv.Store().Dump(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("view changed across the restart:\nbefore %+v\nafter  %+v", before, after)
	}
	restAfter, _ := ts2.online("userIds=A,B,C")
	if !reflect.DeepEqual(restBefore, restAfter) {
		t.Fatalf("REST answer changed across the restart:\nbefore %+v\nafter  %+v", restBefore, restAfter)
	}
	if list, _ := ts2.online(""); len(list) != 0 {
		t.Fatalf("users online after everyone left: %+v", list)
	}
	// The rebuilt view equals the live one.
	if _, err := ts2.srv.Store().Rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	rebuilt, _ := ts2.srv.Store().Dump(ctx)
	if !reflect.DeepEqual(after, rebuilt) {
		t.Fatalf("rebuilt view differs:\nlive    %+v\nrebuilt %+v", after, rebuilt)
	}
}

// TestShutdownClosesConnections: a graceful stop sends close frames, records
// ConnectionClosed{shutdown}, and the next start announces UserOffline exactly once.
func TestShutdownClosesConnections(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, dir, nil)
	c := ts.dial("S")
	waitFor(t, "S online", func() bool { s, _ := ts.online("userIds=S"); return s[0].IsOnline })
	ts.stop()
	select {
	case err := <-c.closed:
		if code := closeStatus(err); code != 1001 {
			t.Fatalf("client saw %v (status %d), want a 1001 close frame", err, code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("client not closed by the shutdown")
	}

	ts2 := startServer(t, dir, nil)
	log, err := ts2.srv.Store().Log(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var reasons []events.CloseReason
	for _, e := range log {
		if e.Type == events.TypeConnectionClosed {
			reasons = append(reasons, e.Reason)
		}
	}
	if !reflect.DeepEqual(reasons, []events.CloseReason{events.ReasonShutdown}) {
		t.Fatalf("close events %v, want one shutdown", reasons)
	}
	sub := ts2.subscribe("0")
	waitFor(t, "UserOffline for S after restart", func() bool { return len(sub.of(events.DetailUserOffline, "S")) == 1 })
	time.Sleep(2 * ts2.cfg.OfflineGrace)
	if n := len(sub.of(events.DetailUserOffline, "S")); n != 1 {
		t.Fatalf("%d UserOffline for S, want 1", n)
	}
}

// TestConnectionLinesAreDebug: a connect and a close each log one line, at debug (a
// server at the default info level writes none per connection; the metrics count them).
func TestConnectionLinesAreDebug(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	ts.dial("A").close(t)
	var lines []map[string]any
	waitFor(t, "the close's line", func() bool {
		lines = lines[:0]
		for _, l := range strings.Split(strings.TrimSpace(ts.logs.String()), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && (m["msg"] == "connected" || m["msg"] == "disconnected") {
				lines = append(lines, m)
			}
		}
		return len(lines) == 2
	})
	for _, m := range lines {
		if m["level"] != "DEBUG" || m["userId"] != "A" || m["connectionId"] == "" {
			t.Errorf("connection line %v: want level DEBUG with the user and connection ids", m)
		}
	}
}
