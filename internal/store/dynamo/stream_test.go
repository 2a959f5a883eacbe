package dynamo_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/wspresence/wspresence/internal/store/dynamo"
	"github.com/wspresence/wspresence/internal/store/dynamo/dynamotest"
)

// TestStream: a user's stream gives contiguous offsets in one epoch, keeps messages for
// the window, flags opted-in connections and moves held outcomes only from the states
// asked for.
func TestStream(t *testing.T) {
	db := dynamotest.Client(t)
	st := dynamo.New(db, dynamotest.NewTables(t, db))
	st.RecoveryWindow = 2 * time.Minute
	ctx := context.Background()
	now := time.Now()

	if _, err := st.Allocate(ctx, "u", now); !errors.Is(err, dynamo.ErrNoStream) {
		t.Fatalf("a user without a stream: %v", err)
	}
	if err := st.Frame(ctx, "u", "c1", now); err != nil {
		t.Fatal(err)
	}
	h, ok, err := st.StreamHead(ctx, "u")
	if err != nil || !ok || h.Epoch == "" || h.Top != 0 || h.Framed["c1"].IsZero() || h.Ready["c1"] {
		t.Fatalf("head %+v %v %v", h, ok, err)
	}
	if err := st.Frame(ctx, "u", "c2", now); err != nil {
		t.Fatal(err)
	}
	if h2, _, _ := st.StreamHead(ctx, "u"); h2.Epoch != h.Epoch {
		t.Fatalf("a second flag changed the epoch: %s -> %s", h.Epoch, h2.Epoch)
	}
	for i := int64(1); i <= 5; i++ {
		a, err := st.Allocate(ctx, "u", now)
		if err != nil || a.Top != i || a.Epoch != h.Epoch {
			t.Fatalf("allocation %d: %+v %v", i, a, err)
		}
		at := now
		if i == 1 {
			at = now.Add(-3 * time.Minute) // past the window
		}
		if err := st.PutMessage(ctx, "u", dynamo.StreamMessage{Epoch: a.Epoch, Offset: i, MessageID: "m", Body: "b", At: at}); err != nil {
			t.Fatal(err)
		}
	}
	ms, err := st.Messages(ctx, "u", h.Epoch, 2, now)
	if err != nil || len(ms) != 3 || ms[0].Offset != 3 || ms[2].Offset != 5 {
		t.Fatalf("after 2: %+v %v", ms, err)
	}
	if ms, _ := st.Messages(ctx, "u", h.Epoch, 0, now); len(ms) != 4 || ms[0].Offset != 2 {
		t.Fatalf("the message past the window is still read: %+v", ms)
	}
	if _, err := st.Claim(ctx, "u", "raw"); !errors.Is(err, dynamo.ErrNotFramed) {
		t.Fatalf("claim of a raw connection: %v", err)
	}
	if _, err := st.Claim(ctx, "u", "c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Claim(ctx, "u", "c1"); !errors.Is(err, dynamo.ErrRecoverRepeated) {
		t.Fatalf("second claim: %v", err)
	}
	r, err := st.Ready(ctx, "u", "c1", now, 4, []string{"c2"})
	if err != nil || !r.Ready["c1"] || len(r.Framed) != 1 || r.Top != 5 || r.Answered["c1"] != 4 || r.ReadySince["c1"].IsZero() {
		t.Fatalf("ready %+v %v", r, err)
	}

	if old, ok, err := st.SetHeld(ctx, "u", h.Epoch, 3, dynamo.HeldPending, ""); err != nil || !ok || old != "" {
		t.Fatalf("hold: %q %v %v", old, ok, err)
	}
	if old, ok, err := st.SetHeld(ctx, "u", h.Epoch, 3, dynamo.HeldPending, ""); err != nil || ok || old != dynamo.HeldPending {
		t.Fatalf("hold twice: %q %v %v", old, ok, err)
	}
	if old, ok, err := st.SetHeld(ctx, "u", h.Epoch, 3, dynamo.HeldReplayed, "", dynamo.HeldPending); err != nil || !ok || old != dynamo.HeldPending {
		t.Fatalf("replay: %q %v %v", old, ok, err)
	}
	if old, ok, err := st.SetHeld(ctx, "u", h.Epoch, 3, dynamo.HeldUndeliverable, dynamo.HeldPending); err != nil || ok || old != dynamo.HeldReplayed {
		t.Fatalf("the timer after a replay: %q %v %v", old, ok, err)
	}
	if _, ok, err := st.SetHeld(ctx, "u", h.Epoch, 99, dynamo.HeldPending, ""); err != nil || ok {
		t.Fatalf("a message that is not there: %v %v", ok, err)
	}
	m, found, err := st.FindMessage(ctx, "u", h.Epoch, "m", now)
	if err != nil || !found || m.Offset != 2 {
		t.Fatalf("find: %+v %v %v", m, found, err)
	}
	if err := st.PutMessage(ctx, "u", dynamo.StreamMessage{Epoch: h.Epoch, Offset: 3, MessageID: "m", Body: "other", At: now}); err != nil {
		t.Fatal(err)
	}
	if m, _, _ := st.Message(ctx, "u", h.Epoch, 3); m.Body != "b" || m.Held != dynamo.HeldReplayed {
		t.Fatalf("a rewrite replaced the message: %+v", m)
	}
}
