package sweeper_test

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/awsfake"
	"github.com/wspresence/wspresence/internal/grace/sqsdelay"
	"github.com/wspresence/wspresence/internal/lambda/grace"
	"github.com/wspresence/wspresence/internal/lambdatest"
	"github.com/wspresence/wspresence/internal/store/dynamo"
)

// timerQueue is the grace queue as the grace function sees it: the timers sent to it.
type timerQueue struct {
	mu    sync.Mutex
	sent  []sqsdelay.Input
	delay []int
}

func (q *timerQueue) fake(t *testing.T) *awsfake.Server {
	return awsfake.New(t, func(req awsfake.Request) awsfake.Response {
		q.mu.Lock()
		defer q.mu.Unlock()
		var in struct {
			MessageBody  string
			DelaySeconds int
		}
		_ = json.Unmarshal(req.Body, &in)
		var timer sqsdelay.Input
		_ = json.Unmarshal([]byte(in.MessageBody), &timer)
		q.sent = append(q.sent, timer)
		q.delay = append(q.delay, in.DelaySeconds)
		return awsfake.JSON(http.StatusOK, map[string]any{"MessageId": "m", "MD5OfMessageBody": md5hex(in.MessageBody)})
	})
}

func md5hex(s string) string {
	sum := md5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}

// TestGraceRaisedWhileTimersAreInFlight: a redeploy raises the grace period from 5 s to
// 60 s while a timer sent under 5 s waits in the queue. The timer arrives 5 s after the
// close, before the new deadline: it decides nothing (the user stays online, no flap)
// and is sent again, delayed to the new deadline, where it ends the period: one
// UserOffline, by id.
func TestGraceRaisedWhileTimersAreInFlight(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	r.connect(t, "raised", "r1=", t0)
	r.publish(t)
	closedAt := t0.Add(time.Minute)
	if _, err := r.store.Append(ctx, events.Closed("raised", "r1=", closedAt, events.ReasonClient)); err != nil {
		t.Fatal(err)
	}
	started := &graces{}
	if n := r.project(t, r.store, started); n != 0 || len(started.started) != 1 {
		t.Fatalf("the close's timer: %d failures, %v", n, started.started)
	}
	r.publish(t)
	old, _ := json.Marshal(sqsdelay.Input{UserID: "raised", OfflineSince: strconv.FormatInt(closedAt.UnixNano(), 10), GraceSeconds: 5})

	// The redeployed functions: a 60-second grace period.
	const raised = 60 * time.Second
	st := dynamo.New(r.db, r.store.Tables())
	st.Grace, st.Now = raised, r.clock
	queue := &timerQueue{}
	starter := sqsdelay.New(sqs.NewFromConfig(queue.fake(t).Config()), "https://sqs.us-east-1.amazonaws.com/1/grace", raised)
	starter.Now = r.clock
	h := &grace.Handler{View: st, Grace: raised, Timers: starter, Now: r.clock, Logger: r.quiet}
	r.setNow(closedAt.Add(5 * time.Second))
	resp, err := h.HandleQueue(ctx, lambdaevents.SQSEvent{Records: []lambdaevents.SQSMessage{{MessageId: "old", Body: string(old)}}})
	if err != nil || len(resp.BatchItemFailures) != 0 {
		t.Fatalf("the early timer: %+v %v", resp, err)
	}
	if s, _ := st.State(ctx, "raised"); !s.User.GracePending() {
		t.Fatalf("the early timer decided: %+v", s.User)
	}
	r.publish(t)
	if got := r.ids(events.DetailUserOffline); len(got) != 0 {
		t.Fatalf("UserOffline before the raised deadline: %v", got)
	}
	queue.mu.Lock()
	if len(queue.sent) != 1 || queue.delay[0] != 55 || queue.sent[0].OfflineSince != strconv.FormatInt(closedAt.UnixNano(), 10) {
		t.Fatalf("timers sent again %+v delays %v, want one delayed 55 s to the new deadline", queue.sent, queue.delay)
	}
	again, _ := json.Marshal(queue.sent[0])
	queue.mu.Unlock()

	r.setNow(closedAt.Add(raised))
	if resp, err := h.HandleQueue(ctx, lambdaevents.SQSEvent{Records: []lambdaevents.SQSMessage{{MessageId: "again", Body: string(again)}}}); err != nil || len(resp.BatchItemFailures) != 0 {
		t.Fatalf("the timer sent again: %+v %v", resp, err)
	}
	r.publish(t)
	wantOnce(t, r.ids(events.DetailUserOffline), events.NewUserOffline("raised", closedAt, t0).ID())

	// A timer of the old length that failed every receive is not run early either: the
	// reconciler flags its period, and ends it once overdue.
	r.connect(t, "dlq", "d1=", t0)
	if _, err := r.store.Append(ctx, events.Closed("dlq", "d1=", closedAt, events.ReasonClient)); err != nil {
		t.Fatal(err)
	}
	r.project(t, st, &graces{})
	dead, _ := json.Marshal(sqsdelay.Input{UserID: "dlq", OfflineSince: strconv.FormatInt(closedAt.UnixNano(), 10), GraceSeconds: 5})
	r.mu.Lock()
	r.dead = append(r.dead, string(dead))
	r.mu.Unlock()
	r.rec.View, r.rec.Grace = st, raised
	r.setNow(closedAt.Add(10 * time.Second))
	if res := r.reconcile(t); res.DeadTimers != 1 || res.GracesEnded != 0 {
		t.Fatalf("the dead timer's run: %+v, want it flagged, not ended", res)
	}
	r.setNow(closedAt.Add(raised + dynamo.DefaultGraceMargin))
	if res := r.reconcile(t); res.GracesEnded != 1 {
		t.Fatalf("the flagged period: %+v", res)
	}
	r.publish(t)
	if got := r.ids(events.DetailUserOffline)[events.NewUserOffline("dlq", closedAt, t0).ID()]; got != 1 {
		t.Fatalf("the dead timer's UserOffline published %d times", got)
	}
}

// TestRelayNeverInvoked: the relay does not run at all (reserved concurrency 0, its
// mapping disabled): IteratorAge is not emitted and the relay publishes nothing. Each
// reconciler run writes a probe only the relay acknowledges, so the runs report the age
// of the oldest unpublished transition growing with the stall (the alarm's metric, with
// missing data breaching); once no probe was acknowledged for the outbox age (10
// minutes), the reconciler reads the view table's stream in the relay's place and
// publishes the transitions with their ids, each once, within 15 minutes of the stall.
// When the relay runs again it acknowledges the probe (it may publish some again, with
// the same ids) and the next run reports nothing unpublished.
func TestRelayNeverInvoked(t *testing.T) {
	r := newRig(t)
	r.connect(t, "u", "u1=", t0)
	r.publish(t) // healthy: UserOnline, and nothing to acknowledge yet
	if res := r.reconcile(t); res.UnpublishedAge != 0 {
		t.Fatalf("first run: %+v", res)
	}
	r.publish(t) // the relay acknowledges the first probe
	r.setNow(t0.Add(5 * time.Minute))
	if res := r.reconcile(t); res.UnpublishedAge != 0 || res.Relayed != 0 {
		t.Fatalf("a healthy relay reported late: %+v", res)
	}
	stalledAt := r.clock()
	// From now on the relay never runs.
	r.connect(t, "v", "v1=", stalledAt)
	online := events.NewUserOnline("v", "v1=", stalledAt).ID()
	var ages []time.Duration
	for i := 1; i <= 4; i++ {
		r.setNow(stalledAt.Add(time.Duration(i) * 5 * time.Minute))
		res := r.reconcile(t)
		ages = append(ages, res.UnpublishedAge)
		if got := r.ids(events.DetailUserOnline)[online]; (i < 2 && got != 0) || (i >= 2 && got != 1) {
			t.Fatalf("run %d, %v after the stall: UserOnline of the stalled write published %d times (%+v)", i, r.clock().Sub(stalledAt), got, res)
		}
	}
	for i, age := range ages {
		if want := time.Duration(i+1) * 5 * time.Minute; age != want {
			t.Fatalf("ages %v: run %d reports %v, want %v (the stall's length)", ages, i+1, age, want)
		}
	}
	// The relay runs again: it acknowledges the probes; what it publishes again has the
	// same ids.
	if n := r.publish(t); n != 0 {
		t.Fatal("relay failed")
	}
	if got := r.ids(events.DetailUserOnline); got[online] > 2 || len(got) != 2 {
		t.Fatalf("UserOnline %v", got)
	}
	r.setNow(r.clock().Add(5 * time.Minute))
	if res := r.reconcile(t); res.UnpublishedAge != 0 || res.Relayed != 0 {
		t.Fatalf("after the relay came back: %+v", res)
	}
}

// TestGhostBesideAnActiveConnection: a user is active on one connection (frames, so its
// activity register is fresh) while another of its connections died with its
// $disconnect lost. The next run asks API Gateway about every connection whatever the
// user's activity: the dead one is swept, the active one stays, the user stays online
// (no UserOffline) and the ghost no longer counts against the connection cap.
func TestGhostBesideAnActiveConnection(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	r.connect(t, "busy", "alive=", t0)
	r.connect(t, "busy", "dead=", t0)
	r.publish(t)
	r.mu.Lock()
	r.gone["dead="] = true
	r.mu.Unlock()
	for m := 1; m <= 20; m += 5 { // frames on the live connection, every window
		r.setNow(t0.Add(time.Duration(m) * time.Minute))
		if _, err := r.store.Touch(ctx, "busy", r.clock()); err != nil {
			t.Fatal(err)
		}
	}
	r.setNow(t0.Add(20 * time.Minute))
	res := r.reconcile(t)
	if res.Swept != 1 || res.Failed != 0 {
		t.Fatalf("run: %+v, want the dead connection swept", res)
	}
	live, err := r.store.LiveConnections(ctx, "busy")
	if err != nil || len(live) != 1 || live[0] != "alive=" {
		t.Fatalf("live %v %v, want only the active connection", live, err)
	}
	r.project(t, r.store, &graces{})
	r.publish(t)
	if got := r.ids(events.DetailUserOffline); len(got) != 0 {
		t.Fatalf("the user went offline: %v", got)
	}
	// The cap of 2 admits a second connection again.
	if _, err := r.store.Admit(ctx, events.Opened("busy", "new=", r.clock(), "", ""), 2); err != nil {
		t.Fatalf("the swept ghost still counts against the cap: %v", err)
	}
}

// TestThrottledDisconnect: a connection closed but its $disconnect was throttled (nothing
// appended); the user reconnected at once and stays active. The old connection is swept
// by the next run though the user is active, with no flap: no UserOffline, and the
// user's item holds only the new connection.
func TestThrottledDisconnect(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	r.connect(t, "flaky", "old=", t0)
	r.publish(t)
	r.mu.Lock()
	r.gone["old="] = true // $disconnect lost to throttling: the log has nothing
	r.mu.Unlock()
	r.connect(t, "flaky", "new=", t0.Add(30*time.Second))
	r.setNow(t0.Add(2 * time.Minute))
	if _, err := r.store.Touch(ctx, "flaky", r.clock()); err != nil {
		t.Fatal(err)
	}
	res := r.reconcile(t)
	if res.Swept != 1 || res.Checked != 2 {
		t.Fatalf("run: %+v, want both connections checked and the old one swept", res)
	}
	if _, ok, err := r.store.LoggedClose(ctx, "old="); err != nil || !ok {
		t.Fatalf("the swept close is not in the log: %v %v", ok, err)
	}
	live, _ := r.store.LiveConnections(ctx, "flaky")
	if len(live) != 1 || live[0] != "new=" {
		t.Fatalf("live %v", live)
	}
	r.project(t, r.store, &graces{})
	r.publish(t)
	if got := r.ids(events.DetailUserOffline); len(got) != 0 {
		t.Fatalf("flap: %v", got)
	}
}

// TestReconcilerAfterAnOutageLongerThanItsRun: after an outage, the grace dead-letter
// queue holds more timers than one run can handle in its time. Each run stops taking
// work before its deadline (no error, nothing cut off mid-way), hides what it took for
// longer than it runs (no message comes back while it still works on it), and leaves the
// rest to the next runs; together they end every period once.
func TestReconcilerAfterAnOutageLongerThanItsRun(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	const users = 30
	var want []string
	closedAt := t0.Add(time.Minute)
	for i := range users {
		u := fmt.Sprintf("out-%02d", i)
		r.connect(t, u, u+"=", t0)
		if _, err := r.store.Append(ctx, events.Closed(u, u+"=", closedAt, events.ReasonClient)); err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(sqsdelay.Input{UserID: u, OfflineSince: strconv.FormatInt(closedAt.UnixNano(), 10), GraceSeconds: 5})
		r.dead = append(r.dead, string(body))
		want = append(want, events.NewUserOffline(u, closedAt, t0).ID())
	}
	r.project(t, r.store, &graces{})
	r.publish(t)
	// Every deletion takes a while (a slow queue): the run cannot take all 30 in its time.
	var visibility []int
	dlq := awsfake.New(t, func(req awsfake.Request) awsfake.Response {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.inFlight == nil {
			r.inFlight = map[int]bool{}
		}
		switch req.Target {
		case "AmazonSQS.ReceiveMessage":
			var in struct{ MaxNumberOfMessages, VisibilityTimeout int }
			_ = json.Unmarshal(req.Body, &in)
			visibility = append(visibility, in.VisibilityTimeout)
			var msgs []map[string]string
			for i, body := range r.dead {
				if body != "" && !r.inFlight[i] && len(msgs) < in.MaxNumberOfMessages {
					r.inFlight[i] = true
					msgs = append(msgs, map[string]string{"MessageId": strconv.Itoa(i), "ReceiptHandle": strconv.Itoa(i), "Body": body, "MD5OfBody": md5hex(body)})
				}
			}
			return awsfake.JSON(http.StatusOK, map[string]any{"Messages": msgs})
		case "AmazonSQS.DeleteMessage":
			var in struct{ ReceiptHandle string }
			_ = json.Unmarshal(req.Body, &in)
			i, _ := strconv.Atoi(in.ReceiptHandle)
			r.dead[i] = ""
			r.mu.Unlock()
			time.Sleep(150 * time.Millisecond)
			r.mu.Lock()
			return awsfake.JSON(http.StatusOK, map[string]any{})
		}
		return awsfake.Error(http.StatusBadRequest, "InvalidAction", req.Target)
	})
	r.rec.DeadTimers = sqsdelay.NewDeadLetters(sqs.NewFromConfig(dlq.Config()), "https://sqs.us-east-1.amazonaws.com/1/grace-dlq")
	r.rec.Reserve = time.Second
	r.setNow(closedAt.Add(time.Hour))
	var scheduled json.RawMessage
	lambdatest.Load(t, "scheduled-event.json", nil, &scheduled)
	runCtx, cancel := context.WithTimeout(ctx, 2500*time.Millisecond)
	res, err := r.rec.Handle(runCtx, scheduled)
	cancel()
	if err != nil || res.Failed != 0 {
		t.Fatalf("the bounded run failed: %+v %v", res, err)
	}
	first := res.GracesEnded
	if first >= users || !res.More {
		t.Fatalf("one run of 1.5 s of work ended %d of %d periods (more: %v): its time did not bound it", first, users, res.More)
	}
	r.mu.Lock()
	for _, v := range visibility {
		if v <= 60 {
			r.mu.Unlock()
			t.Fatalf("messages hidden %d s: not the run's length plus a margin", v)
		}
	}
	r.mu.Unlock()
	// The messages taken and not handled come back once hidden no more; later runs end
	// the rest.
	for runs := 0; ; runs++ {
		r.mu.Lock()
		r.inFlight = nil
		r.mu.Unlock()
		res := r.reconcile(t)
		if res.DeadTimers == 0 {
			break
		}
		if runs > 5 {
			t.Fatal("the reconciler does not converge")
		}
	}
	r.publish(t)
	wantOnce(t, r.ids(events.DetailUserOffline), want...)
}

// TestLoweredShardCount: users went online under 10 shards of the online index; a
// redeploy lowers OnlineIndexShards to 3. The list still shows every online user (the
// highest count written with is recorded, and lists read that many shards), the
// reconciler still checks them all, and a user written again moves to a shard of the new
// count.
func TestLoweredShardCount(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	r.store.OnlineShards = 10
	const users = 60
	for i := range users {
		r.connect(t, fmt.Sprintf("s-%02d", i), fmt.Sprintf("s%d=", i), t0)
	}
	lowered := dynamo.New(r.db, r.store.Tables())
	lowered.Grace, lowered.Now, lowered.OnlineShards = testGrace, r.clock, 3
	page, err := lowered.OnlineUsers(ctx, "", 1000)
	if err != nil || len(page) != users {
		t.Fatalf("after lowering the shards the list shows %d of %d users (%v)", len(page), users, err)
	}
	r.rec.View, r.rec.PassEvery = lowered, 10*time.Minute
	if res := r.reconcile(t); res.Scanned != users || res.Checked != users || res.Passes != 1 {
		t.Fatalf("the reconciler saw %+v, want all %d users", res, users)
	}
	// The next pass begins 10 minutes after the last one did, not at every run.
	r.setNow(t0.Add(5 * time.Minute))
	if res := r.reconcile(t); res.Scanned != 0 || res.GhostAge != 5*time.Minute {
		t.Fatalf("a run 5 minutes after a pass: %+v", res)
	}
	r.setNow(t0.Add(10 * time.Minute))
	if res := r.reconcile(t); res.Scanned != users {
		t.Fatalf("a run 10 minutes after a pass: %+v", res)
	}
	// A later write re-keys the user under the new count; the list still shows everyone.
	if _, err := lowered.Admit(ctx, events.Opened("s-07", "again=", t0.Add(time.Minute), "", ""), 10); err != nil {
		t.Fatal(err)
	}
	if page, _ := lowered.OnlineUsers(ctx, "", 1000); len(page) != users {
		t.Fatalf("%d users listed after a re-keying write", len(page))
	}
}
